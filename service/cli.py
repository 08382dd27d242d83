"""`trainlab`: the command line for a trainlab server (`--url`, or TRAINLAB_URL; default http://127.0.0.1:8000).

Exit codes:
0 done
1 the experiment failed or was cancelled
2 bad usage or an unreadable spec file
3 no server answers
4 the server refused the request (an invalid spec: the message names the field)
"""

from __future__ import annotations

import csv
import json
import os
import sys
import time
from pathlib import Path
from typing import Annotated, Any

import typer
import yaml
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Column, Table
from rich.text import Text

from service.client import FINISHED, APIError, Client, ClientError, ServerUnavailable
from service.compare import chart_metric, compact, difference_rows
from service.diagnosis import SHORT_NAMES
from service.errors import InvalidInput
from service.schemas import Confusion, ExperimentPublic, Finding, Gradients, ListOrder, RowPredictions, Status
from service.specs import EpochMetrics
from service.sweeps import SweepPublic
from service.tables import csv_rows

app = typer.Typer(help=__doc__, no_args_is_help=True, add_completion=False)


def _console(*, stderr: bool) -> Console:
    """No markup: names, errors and values come from users (`[/]` in a name would be a rich error); styles are
    Text's. In a pipe or a file, a table row stays one line up to 1,000 columns (rich would cut it to 80)."""
    stream = sys.stderr if stderr else sys.stdout
    width = None if stream.isatty() or "COLUMNS" in os.environ else 1000
    return Console(stderr=stderr, markup=False, width=width)


out = _console(stderr=False)
err = _console(stderr=True)

EXIT_FAILED, EXIT_USAGE, EXIT_UNAVAILABLE, EXIT_REFUSED = 1, 2, 3, 4

Url = Annotated[str, typer.Option("--url", envvar="TRAINLAB_URL", help="the server's base URL")]
DEFAULT_URL = "http://127.0.0.1:8000"
SpecFile = Annotated[
    Path | None,
    typer.Argument(help="an experiment spec, .json or .yaml; - reads it from standard input; none: --set builds it"),
]
STDIN = Path("-")
Watch = Annotated[bool, typer.Option("--watch", "-w", help="follow it live until it finishes")]
Overrides = Annotated[
    list[str] | None,
    typer.Option(
        "--set", "-s", metavar="PATH=VALUE",
        help="change the file's value at PATH, e.g. optimizer.lr=0.01, model.hidden=[256,128], augment.0.p=0.2, "
        "base.epochs=2 in a sweep (VALUE is read as JSON, else as text); repeatable",
    ),
]  # fmt: skip


def _client(url: str) -> Client:
    return Client(url)


def _fail(message: str, code: int) -> typer.Exit:
    err.print(Text.assemble(("error:", "bold red"), f" {message}"), highlight=False)
    return typer.Exit(code)


def _call(url: str, action):
    """Run `action(client)`, turning the client's errors into messages and exit codes."""
    with _client(url) as client:
        try:
            return action(client)
        except ServerUnavailable as exc:
            raise _fail(f"{exc}. Is it running? (make run)", EXIT_UNAVAILABLE) from None
        except APIError as exc:
            raise _fail(f"the server refused it: {exc}", EXIT_REFUSED) from None


def _write(path: Path, data: bytes) -> None:
    try:
        path.write_bytes(data)
    except OSError as exc:
        raise _fail(f"cannot write {path}: {exc.strerror}", EXIT_USAGE) from None


def _save(path: Path, data: bytes) -> None:
    _write(path, data)
    out.print(f"wrote {path}")


def _existing(path: Path) -> Path:
    if not path.is_file():
        raise _fail(f"no such file: {path}", EXIT_USAGE)
    return path


def _load_spec(path: Path, what: str = "one experiment spec") -> dict:
    """The spec in a file (YAML for .yaml/.yml, else JSON), or on standard input for `-` (JSON, else YAML)."""
    source = "standard input" if path == STDIN else str(path)
    try:
        text = sys.stdin.read() if path == STDIN else path.read_text()
    except OSError as exc:
        raise _fail(f"cannot read {source}: {exc.strerror}", EXIT_USAGE) from None
    if path == STDIN:
        parse, language = _json_else_yaml, "JSON or YAML"
    elif path.suffix in (".yaml", ".yml"):
        parse, language = yaml.safe_load, "YAML"
    else:
        parse, language = json.loads, "JSON"
    try:
        spec = parse(text)
    except (ValueError, yaml.YAMLError) as exc:
        raise _fail(f"{source} is not valid {language}: {exc}", EXIT_USAGE) from None
    if not isinstance(spec, dict):
        raise _fail(f"{source} must hold {what} (an object)", EXIT_USAGE)
    return spec


def _json_else_yaml(text: str) -> Any:
    """JSON first: YAML reads most JSON, but not JSON indented with tabs."""
    try:
        return json.loads(text)
    except ValueError:
        return yaml.safe_load(text)


def _summary(e: ExperimentPublic) -> str:
    best = e.best
    if best is None:
        metric = "-"
    elif best.val_accuracy is not None:
        metric = f"val_accuracy {best.val_accuracy:.4f} (epoch {best.epoch})"
    else:
        metric = f"val_loss {best.val_loss:.4f} (epoch {best.epoch})"
    return metric


def _set_path(spec: dict, assignment: str) -> None:
    """Apply one `--set PATH=VALUE` to the spec as its file gave it: sections the file left out (or null) are
    started, so the server fills in the rest; a number in the path is a list index."""
    path, sep, text = assignment.partition("=")
    if not sep or not path:
        raise _fail(f"--set {assignment!r}: give PATH=VALUE, e.g. optimizer.lr=0.01", EXIT_USAGE)
    try:
        value: Any = json.loads(text)
    except ValueError:
        value = text
    parts = path.split(".")
    node: Any = spec
    for depth, part in enumerate(parts):
        if isinstance(node, dict) and (rest := ".".join(parts[depth:])) in node:  # a key with dots: a sweep's grid
            node[rest] = value
            return
        if isinstance(node, list) and part.isdigit() and int(part) < len(node):
            key: int | str = int(part)
        elif isinstance(node, dict) and part:
            key = part
        else:
            where = ".".join(parts[:depth]) or "the spec"
            raise _fail(f"--set {path}: {where} holds no {part!r} (it is {json.dumps(node)[:60]})", EXIT_USAGE)
        if depth == len(parts) - 1:
            node[key] = value
            return
        if (node[key] if isinstance(node, list) else node.get(key)) is None:
            node[key] = {}
        node = node[key]


def _spec_from(spec_file: Path | None, overrides: list[str] | None, what: str = "one experiment spec") -> dict:
    if spec_file is None and not overrides:
        raise _fail("give a spec file (- reads standard input), or build one: --set dataset.name=mnist-10k "
                    "--set model.kind=cnn", EXIT_USAGE)  # fmt: skip
    spec = {} if spec_file is None else _load_spec(spec_file, what)
    for assignment in overrides or ():
        _set_path(spec, assignment)
    return spec


EXTRAPOLATES = "outside what the model learnt from, so its prediction extrapolates"


def _warn(warnings: list[str]) -> None:
    for warning in warnings:
        err.print(Text.assemble(("warning:", "yellow"), f" {warning}"), highlight=False)


@app.command()
def submit(
    spec_file: SpecFile = None,
    overrides: Overrides = None,
    watch: Watch = False,
    url: Url = DEFAULT_URL,
) -> None:
    """Queue an experiment."""
    spec = _spec_from(spec_file, overrides)
    experiment = _call(url, lambda c: c.submit(spec))
    _queued(url, experiment, watch)


def _queued(url: str, experiment: ExperimentPublic, watch: bool, note: str = "") -> None:
    out.print(Text.assemble("experiment ", (str(experiment.id), "bold"), f" queued: {experiment.name}{note}"))
    _warn(experiment.warnings)
    if watch:
        _watch(url, experiment.id)


@app.command()
def validate(
    spec_file: SpecFile = None,
    overrides: Overrides = None,
    code: Annotated[bool, typer.Option("--code", help="also print the model as PyTorch code")] = False,
    url: Url = DEFAULT_URL,
) -> None:
    """Check a spec without queueing it: each layer's output shape and parameters, memory, warnings."""
    spec = _spec_from(spec_file, overrides)
    report = _call(url, lambda c: c.validate(spec))
    table = Table("layer", "kind", "output shape", Column("parameters", justify="right"))
    table.add_row("input", "", _shape(report["input_shape"]), "")
    for layer in report["layers"]:
        table.add_row(str(layer["index"]), layer["kind"], _shape(layer["output_shape"]), f"{layer['parameters']:,}")
    out.print(table)
    parts = ", ".join(f"{name.replace('_', ' ')} {_size(n)}" for name, n in report["memory"].items() if n)
    out.print(f"{report['parameters']:,} parameters, {report['trainable_parameters']:,} trainable; training needs "
              f"about {_size(report['estimated_memory_bytes'])} at batch size {report['spec']['batch_size']} "
              f"({parts})")  # fmt: skip
    if code:
        out.print(f"\n{report['model_code']}", markup=False, highlight=False)
    _warn(report["warnings"])


def _size(n_bytes: int) -> str:
    """MiB, or KiB below one (a small MLP's training memory would read as "0 MiB")."""
    return f"{n_bytes / 2**20:,.0f} MiB" if n_bytes >= 2**20 else f"{max(n_bytes / 2**10, 1):,.0f} KiB"


def _shape(shape: list[int]) -> str:
    return "x".join(map(str, shape))


@app.command()
def rerun(
    experiment_id: int,
    watch: Watch = False,
    url: Url = DEFAULT_URL,
) -> None:
    """Queue an experiment's spec again, as a new experiment (same seed: the same metrics on the same device)."""
    experiment = _call(url, lambda c: c.rerun(experiment_id))
    _queued(url, experiment, watch, f" (a rerun of {experiment_id})")


@app.command("list")
def list_(
    status: Annotated[Status | None, typer.Option(help="only these")] = None,
    dataset: Annotated[str | None, typer.Option(help="only those trained on this dataset")] = None,
    model: Annotated[str | None, typer.Option(help="only this model kind (mlp, cnn, resnet18, ...)")] = None,
    name: Annotated[str | None, typer.Option(help="only those with this in their name (any case)")] = None,
    sweep: Annotated[int | None, typer.Option(help="only this sweep's trials")] = None,
    tag: Annotated[list[str] | None, typer.Option("--tag", "-t", help="only those with this tag; repeatable")] = None,
    sort: Annotated[
        ListOrder, typer.Option(help="newest, oldest, or by the best epoch's val_accuracy (highest first) or val_loss")
    ] = "newest",
    limit: Annotated[int, typer.Option(min=1, max=500)] = 20,
    url: Url = DEFAULT_URL,
) -> None:
    """The newest experiments (or the best, with --sort val_accuracy)."""
    filters = {"status": status, "dataset": dataset, "model": model, "name": name, "sweep": sweep}
    page = _call(url, lambda c: c.list(**filters, tags=tag or (), sort=sort, limit=limit))
    tagged = any(e.tags for e in page.items)
    table = Table("id", "name", "status", "dataset", "model", "epoch", "best", "created", *(["tags"] if tagged else []))
    for e in page.items:
        table.add_row(
            str(e.id), e.name, e.status.value, e.spec.dataset.name, e.spec.model.kind,
            f"{e.current_epoch}/{e.epochs}", _summary(e), e.created_at.strftime("%Y-%m-%d %H:%M"),
            *([" ".join(e.tags)] if tagged else []),
        )  # fmt: skip
    out.print(table)
    out.print(f"{len(page.items)} of {page.total}")


@app.command()
def show(experiment_id: int, url: Url = DEFAULT_URL) -> None:
    """One experiment: status, spec, best epoch, metrics per epoch."""
    experiment, rows, findings = _call(
        url, lambda c: (c.get(experiment_id), c.metrics(experiment_id), c.diagnosis(experiment_id))
    )
    progress = f"{experiment.status.value}, epoch {experiment.current_epoch}/{experiment.epochs}"
    title = (f"#{experiment.id} {experiment.name}", "bold")
    out.print(Text.assemble(title, f": {progress}, best {_summary(experiment)}"))
    if experiment.error:
        out.print(experiment.error, style="red")
    if experiment.stop_reason:
        out.print(experiment.stop_reason)
    if experiment.tags:
        out.print(f"tags: {' '.join(experiment.tags)}", highlight=False)
    if experiment.notes:
        out.print(Text(experiment.notes))
    out.print_json(experiment.spec.model_dump_json())
    if rows:
        out.print(_metrics_table(rows))
    _print_findings(findings)


def _print_findings(findings: list[Finding]) -> None:
    """What the curves show, in words (GET .../diagnosis), under the metrics table."""
    for finding in findings:
        out.print(Text(finding.message, style="yellow"))


# The columns a metrics table shows, with short headers (80 columns are enough); a task's others are null.
COLUMNS = {
    "epoch": "epoch", "train_loss": "train loss", "val_loss": "val loss", "train_accuracy": "train acc",
    "val_accuracy": "val acc", "train_mae": "train MAE", "val_mae": "val MAE", "val_rmse": "val RMSE",
    "val_r2": "val R²", "lr": "lr", "duration_s": "seconds",
}  # fmt: skip


def _columns(row: EpochMetrics) -> list[str]:
    values = row.model_dump()
    return [k for k in COLUMNS if values[k] is not None]


def _metrics_table(rows: list[EpochMetrics]) -> Table:
    """One row per epoch, the columns the task records."""
    columns = _columns(rows[0])
    table = Table(*(COLUMNS[k] for k in columns))
    for row in rows:
        values = row.model_dump()
        table.add_row(*(_fmt(values[k]) for k in columns))
    return table


def _epoch_line(row: EpochMetrics, epochs: int) -> str:
    values = row.model_dump()
    metrics = "  ".join(f"{COLUMNS[k]} {_fmt(values[k])}" for k in _columns(row) if k not in ("epoch", "duration_s"))
    return f"epoch {row.epoch}/{epochs}  {metrics}  ({row.duration_s:.1f} s)"


def _fmt(value: object) -> str:
    if value is None:
        return "-"
    return f"{value:.4g}" if isinstance(value, float) else compact(value)


@app.command()
def watch(experiment_id: int, url: Url = DEFAULT_URL) -> None:
    """Follow an experiment live: a progress bar per epoch (running loss, ETA), a metrics row per epoch."""
    _watch(url, experiment_id)


def _watch(url: str, experiment_id: int) -> None:
    final = _call(url, lambda c: _follow(c, experiment_id))
    if final != Status.succeeded.value:
        raise typer.Exit(EXIT_FAILED)


def _progress_fields(data: dict) -> dict[str, str]:
    """A progress event's fields for the bar: a training epoch's batches, or (stage "features") a frozen
    backbone's features being computed at the start of the first epoch."""
    features = data.get("stage") == "features"
    return {
        "epoch": f"{data['epoch']}/{data['epochs']}" + (" (the frozen backbone's features)" if features else ""),
        "loss": "-" if features else f"{data['loss']:.4f}",
        "rate": f"{data['samples_per_s']:.0f} samples/s",
    }


def _follow(client: Client, experiment_id: int) -> str:
    """Render the event stream; the final status."""
    bar = Progress(
        TextColumn("epoch {task.fields[epoch]}"), BarColumn(), MofNCompleteColumn(),
        TextColumn("loss {task.fields[loss]}"), TextColumn("{task.fields[rate]}"), TimeRemainingColumn(),
        console=out, transient=True,
    )  # fmt: skip
    epochs: list[EpochMetrics] = []
    epochs_total = client.get(experiment_id).epochs
    task = None
    status = Status.queued.value
    with bar:
        for event in client.stream(experiment_id):
            if event.kind == "queue":
                bar.console.print(f"queued, position {event.data['position']}: waiting for {event.data['waiting_for']}")
            elif event.kind == "status":
                status = event.data["status"]
                note = event.data.get("error") or event.data.get("stop_reason") or ""
                bar.console.print(Text.assemble((status, "bold"), f" {note}".rstrip()))
            elif event.kind == "progress":
                fields = _progress_fields(event.data)
                if task is None:
                    task = bar.add_task("train", total=event.data["batches"], **fields)
                bar.update(task, completed=event.data["batch"], total=event.data["batches"], **fields)
            elif event.kind == "epoch":
                epochs.append(row := EpochMetrics.model_validate(event.data))
                bar.console.print(_epoch_line(row, epochs_total))
                if task is not None:
                    bar.remove_task(task)
                    task = None
    if epochs:
        out.print(_metrics_table(epochs))
        _print_findings(client.diagnosis(experiment_id))
    return status


@app.command()
def curves(
    experiment_id: int,
    output: Annotated[Path, typer.Option("-o", "--output", help="where to write the PNG")] = Path("curves.png"),
    url: Url = DEFAULT_URL,
) -> None:
    """Save the loss and metric curves as a PNG."""
    _save(output, _call(url, lambda c: c.curves(experiment_id)))


@app.command()
def checkpoint(
    experiment_id: int,
    output: Annotated[Path | None, typer.Option("-o", "--output", help="default: experiment-ID-epoch-N.pt")] = None,
    epoch: Annotated[int | None, typer.Option(min=1, help="default: the best epoch")] = None,
    code: Annotated[
        bool,
        typer.Option("--code", help="also write the model as a PyTorch script that loads it: experiment-ID-model.py"),
    ] = False,
    url: Url = DEFAULT_URL,
) -> None:
    """Download a trained model's checkpoint (torch.load(f, weights_only=True) reads it)."""
    found = _call(url, lambda c: c.checkpoint(experiment_id, epoch=epoch))
    output = output or Path(f"experiment-{experiment_id}-epoch-{found.epoch}.pt")
    _write(output, found.data)
    out.print(f"wrote {output} (epoch {found.epoch}, sha256 {found.sha256[:16]}...)")
    if code:
        script = output.with_name(f"experiment-{experiment_id}-model.py")
        _write(script, _call(url, lambda c: c.model_script(experiment_id, epoch=found.epoch)).encode())
        out.print(f"wrote {script}: python {script} {output} IMAGE")


@app.command()
def predict(
    experiment_id: int,
    source: Annotated[Path, typer.Argument(help="a PNG, JPEG or WebP image; or a CSV, for a model of a table")],
    top_k: Annotated[int | None, typer.Option(min=1, help="classes to show (default: 5 for an image, 1 a row)")] = None,
    url: Url = DEFAULT_URL,
) -> None:
    """Classify an image with the experiment's best checkpoint, or predict each row of a CSV table."""
    if _existing(source).suffix.lower() == ".csv":
        _predict_table(url, experiment_id, source, top_k or 1)
        return
    prediction = _call(url, lambda c: c.predict(experiment_id, source, top_k=top_k or 5))
    table = Table("class", "probability")
    for p in prediction.probabilities:
        table.add_row(p.class_name, f"{p.probability:.4f}")
    out.print(Text.assemble((prediction.class_name, "bold"), f" (epoch {prediction.epoch})"))
    out.print(table)
    if prediction.outside_training_range:
        _warn([f"{prediction.outside_training_range}: {EXTRAPOLATES}"])


@app.command()
def activations(
    experiment_id: int,
    image: Annotated[Path, typer.Argument(help="a PNG, JPEG or WebP image")],
    output: Annotated[Path, typer.Option("-o", "--output", help="where to write the PNG")] = Path("activations.png"),
    epoch: Annotated[int | None, typer.Option(min=1, help="that epoch's checkpoint (default: the best)")] = None,
    url: Url = DEFAULT_URL,
) -> None:
    """Save a PNG of what each layer of the model makes of an image: a few channels' maps, or a bar a value."""
    _save(output, _call(url, lambda c: c.activations(experiment_id, _existing(image), epoch=epoch)))


@app.command()
def saliency(
    experiment_id: int,
    image: Annotated[Path, typer.Argument(help="a PNG, JPEG or WebP image")],
    label: Annotated[int | None, typer.Option(min=0, help="the class (default: the predicted one)")] = None,
    output: Annotated[Path, typer.Option("-o", "--output", help="where to write the PNG")] = Path("saliency.png"),
    epoch: Annotated[int | None, typer.Option(min=1, help="that epoch's checkpoint (default: the best)")] = None,
    url: Url = DEFAULT_URL,
) -> None:
    """Save a PNG of which pixels of an image sway the model's score of a class most."""
    _save(output, _call(url, lambda c: c.saliency(experiment_id, _existing(image), label=label, epoch=epoch)))


def _predict_table(url: str, experiment_id: int, path: Path, top_k: int) -> None:
    def ask(client: Client) -> tuple[RowPredictions, str]:
        experiment = client.get(experiment_id)
        dataset = _dataset_or_none(client, experiment.spec.dataset.name)
        features = dataset["feature_names"] if dataset else None
        rows = _read_rows(path, features)
        target = dataset["class_names"][0] if dataset and experiment.spec.task == "regression" else "class"
        return client.predict_rows(experiment_id, rows, top_k=top_k), target

    predicted, target = _call(url, ask)
    table = Table("row", f"predicted {target}", title=f"epoch {predicted.epoch}")
    if predicted.values is not None:
        for row, value in enumerate(predicted.values, 1):
            table.add_row(str(row), _fmt(value))
    else:
        for row, classes in enumerate(predicted.classes or [], 1):
            table.add_row(str(row), ", ".join(f"{c.class_name} ({c.probability:.4f})" for c in classes))
    out.print(table)
    _warn([f"row {row}: {values}: {EXTRAPOLATES}" for row, values in enumerate(predicted.outside_training_range, 1)
           if values])  # fmt: skip


def _dataset_or_none(client: Client, name: str) -> dict | None:
    """The dataset's description; None where it has been deleted since (the model still answers)."""
    try:
        return client.dataset(name)
    except APIError as exc:
        if exc.status_code == 404:
            return None
        raise


def _read_rows(path: Path, features: list[str] | None) -> list[list[float]]:
    """A CSV's rows of features. With a header row naming the dataset's features, its columns are picked by name
    (in any order, the target's and others left out); without one, every column is a feature, in the dataset's
    order."""
    try:
        rows = list(csv_rows(path.read_text(encoding="utf-8-sig")))
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise _fail(f"cannot read {path} as a CSV: {exc}", EXIT_USAGE) from None
    columns, first_line = None, 1
    if rows and not _numbers(rows[0]):
        header, first_line = [name.strip() for name in rows.pop(0)], 2
        if features is not None:  # else (the dataset deleted since): the columns in the dataset's order
            if missing := [name for name in features if name not in header]:
                raise _fail(f"{path}: the header lacks the model's features {', '.join(missing)}", EXIT_USAGE)
            columns = [header.index(name) for name in features]
    table = []
    for line, row in enumerate(rows, first_line):
        values = [row[i] if i < len(row) else "" for i in columns] if columns else row
        if not _numbers(values):
            raise _fail(f"{path}, line {line}: every feature must be a number ({', '.join(values)})", EXIT_USAGE)
        table.append([float(v) for v in values])
    if not table:
        raise _fail(f"{path} has no rows to predict", EXIT_USAGE)
    return table


def _numbers(cells: list[str]) -> bool:
    try:
        for cell in cells:
            float(cell)
    except ValueError:
        return False
    return True


@app.command()
def confusion(
    experiment_id: int,
    epoch: Annotated[int | None, typer.Option(min=1, help="default: the best epoch")] = None,
    url: Url = DEFAULT_URL,
) -> None:
    """A classifier's confusion matrix on the validation split (rows: true class), with each class's accuracy and
    precision."""

    def ask(client: Client) -> tuple[Confusion, bool]:
        dataset = _dataset_or_none(client, client.get(experiment_id).spec.dataset.name)
        return client.confusion(experiment_id, epoch=epoch), dataset is not None and dataset["features"] is None

    found, images = _call(url, ask)
    counts = (Column(name, justify="right") for name in found.class_names)
    table = Table("true \\ predicted", *counts, Column("accuracy", justify="right"),
                  title=f"#{experiment_id}, epoch {found.epoch}: validation accuracy {found.accuracy:.4f}")  # fmt: skip
    for name, row, accuracy in zip(found.class_names, found.matrix, found.per_class_accuracy, strict=True):
        table.add_row(name, *map(str, row), _fmt(accuracy))
    table.add_row("precision", *map(_fmt, found.per_class_precision), "", style="dim")
    out.print(table)
    cells = [(n, i, j) for i, row in enumerate(found.matrix) for j, n in enumerate(row) if i != j and n]
    if cells and images:  # a table's classifier has no images of its mistakes to show
        n, true, predicted = max(cells)
        names = found.class_names
        out.print(f"most often mistaken: {names[true]} for {names[predicted]} ({n} times); to see them: trainlab "
                  f"mistakes {experiment_id} --true {true} --predicted {predicted}", highlight=False)  # fmt: skip


@app.command()
def gradients(
    experiment_id: int,
    epoch: Annotated[int | None, typer.Option(min=1, help="default: the best epoch")] = None,
    url: Url = DEFAULT_URL,
) -> None:
    """The training loss's gradient at each layer with a weight, first layer first, as root mean squares beside the
    weight's: through sigmoids it vanishes on its way back to the first layers (`gradients.png` draws it)."""
    found: Gradients = _call(url, lambda c: c.gradients(experiment_id, epoch=epoch))
    table = Table("layer", Column("parameters", justify="right"), Column("weight", justify="right"),
                  Column("gradient", justify="right"), Column("gradient / weight", justify="right"),
                  title=f"#{experiment_id}, epoch {found.epoch}: the training loss's gradient over "
                        f"{found.examples} training examples (loss {found.loss:.4g}), root mean squares")  # fmt: skip
    for layer in found.layers:
        gradient = layer.gradient_rms
        ratio = gradient / layer.weight_rms if gradient is not None and layer.weight_rms else None
        table.add_row(layer.name, f"{layer.parameters:,}", f"{layer.weight_rms:.3g}",
                      "frozen" if gradient is None else f"{gradient:.3g}", "-" if ratio is None else f"{ratio:.3g}")  # fmt: skip
    out.print(table)
    if found.relus:
        dead = Table("ReLU layer", Column("units", justify="right"), Column("dead", justify="right"))
        for relu in found.relus:
            dead.add_row(relu.name, str(relu.units), f"{relu.dead:.0%}")
        out.print(dead)
        out.print("dead: units that output 0 for every one of those examples, through which no gradient passes")


@app.command()
def weights(
    experiment_id: int,
    epoch: Annotated[int | None, typer.Option(min=1, help="default: the best epoch")] = None,
    output: Annotated[Path, typer.Option("-o", "--output", help="where to write the PNG")] = Path("weights.png"),
    url: Url = DEFAULT_URL,
) -> None:
    """Save the weights of the model's first layer as a PNG: a conv net's filters or a linear layer's units as
    images (a linear model's, one a class); a table's model's per feature (a linear regression's coefficients)."""
    _save(output, _call(url, lambda c: c.weights(experiment_id, epoch=epoch)))


@app.command()
def mistakes(
    experiment_id: int,
    true: Annotated[int | None, typer.Option(help="only images of this class (its label, a row of the matrix)")] = None,
    predicted: Annotated[int | None, typer.Option(help="only those taken for this class (a column)")] = None,
    epoch: Annotated[int | None, typer.Option(min=1, help="default: the best epoch")] = None,
    output: Annotated[Path, typer.Option("-o", "--output", help="where to write the PNG")] = Path("mistakes.png"),
    url: Url = DEFAULT_URL,
) -> None:
    """Save the validation images the classifier got most confidently wrong (of one cell of its confusion matrix,
    with --true and --predicted) as a PNG."""
    _save(output, _call(url, lambda c: c.mistakes(experiment_id, true=true, predicted=predicted, epoch=epoch)))


@app.command()
def compare(
    experiment_ids: Annotated[list[int], typer.Argument(help="two or more experiment ids")],
    metric: Annotated[str | None, typer.Option(help="per epoch; default: what best epochs are chosen by")] = None,
    url: Url = DEFAULT_URL,
) -> None:
    """Experiments side by side: where their specs differ, a metric per epoch, and their best epochs."""
    found = _call(url, lambda c: c.compare(experiment_ids))
    try:
        metric = chart_metric([e.spec.task for e in found.experiments], metric)
    except InvalidInput as exc:
        raise _fail(exc.detail, EXIT_USAGE) from None
    ids = [f"#{e.id}" for e in found.experiments]
    differences = Table("spec", *ids, title="where the specs differ")
    for difference in found.spec_differences:
        for path, values in difference_rows(difference.path, difference.values):
            differences.add_row(path, *values)
    out.print(differences if found.spec_differences else "the specs are the same (but for names)")
    per_epoch = Table("epoch", *ids, title=metric)
    for row in found.epochs:
        per_epoch.add_row(str(row.epoch), *(_fmt(value) for value in row.values[metric]))
    out.print(per_epoch)
    best = Table("best epoch", *ids)
    best.add_row("val acc", *map(_fmt, found.best_val_accuracy))
    best.add_row("  vs first", *map(_fmt, found.best_val_accuracy_vs_first))
    best.add_row("val loss", *map(_fmt, found.best_val_loss))
    best.add_row("  vs first", *map(_fmt, found.best_val_loss_vs_first))
    out.print(best)


@app.command()
def edit(
    experiment_id: int,
    name: Annotated[str | None, typer.Option(help="its new name")] = None,
    notes: Annotated[str | None, typer.Option(help="notes on the run, replacing any it had ('' clears them)")] = None,
    tag: Annotated[list[str] | None, typer.Option("--tag", "-t", help="add this tag; repeatable")] = None,
    untag: Annotated[list[str] | None, typer.Option(help="remove this tag; repeatable")] = None,
    url: Url = DEFAULT_URL,
) -> None:
    """Rename an experiment, write notes on it, add or remove its tags (find them with `list --tag`)."""
    if name is None and notes is None and not tag and not untag:
        raise _fail("nothing to change: give --name, --notes, --tag or --untag", EXIT_USAGE)

    experiment = _call(
        url, lambda c: c.update(experiment_id, name=name, notes=notes, add_tags=tag or None, remove_tags=untag or None)
    )
    tags = f" [{' '.join(experiment.tags)}]" if experiment.tags else ""
    out.print(Text(f"experiment {experiment.id}: {experiment.name}{tags}"))


@app.command()
def cancel(experiment_id: int, url: Url = DEFAULT_URL) -> None:
    """Cancel a queued or running experiment."""
    experiment = _call(url, lambda c: c.cancel(experiment_id))
    out.print(f"experiment {experiment.id}: {experiment.status.value}")


@app.command()
def delete(experiment_id: int, url: Url = DEFAULT_URL) -> None:
    """Delete a finished experiment: its metrics, checkpoints, logs and TensorBoard files."""
    _call(url, lambda c: c.delete(experiment_id))
    out.print(f"experiment {experiment_id}: deleted")


@app.command()
def sweep(
    request_file: Annotated[
        Path,
        typer.Argument(help="a sweep: base spec, grid and/or random, .json or .yaml; - reads it from standard input"),
    ],
    overrides: Overrides = None,
    watch: Annotated[bool, typer.Option("--watch", "-w", help="wait for every trial, then rank them")] = False,
    url: Url = DEFAULT_URL,
) -> None:
    """Queue a sweep: one experiment per trial."""
    request = _spec_from(request_file, overrides, "one sweep (base, grid, random, max_trials)")
    queued = _call(url, lambda c: c.submit_sweep(request))
    trials = sorted(queued.trials, key=lambda t: t.experiment_id)
    ids = ", ".join(str(t.experiment_id) for t in trials)
    out.print(Text.assemble("sweep ", (str(queued.id), "bold"),
                        f" queued: {queued.name}, {len(queued.trials)} trials (experiments {ids})"))  # fmt: skip
    _warn([f"{t.label}: {warning}" for t in trials for warning in t.warnings])
    if watch:
        final = _call(url, lambda c: _wait_for_trials(c, queued.id))
        out.print(_trials_table(final))
        if any(t.status != Status.succeeded.value for t in final.trials):
            raise typer.Exit(EXIT_FAILED)


@app.command()
def sweeps(
    sweep_id: Annotated[int | None, typer.Argument(help="one sweep's trials, best first")] = None,
    url: Url = DEFAULT_URL,
) -> None:
    """The newest sweeps, or one sweep's trials ranked."""
    if sweep_id is not None:
        out.print(_trials_table(_call(url, lambda c: c.sweep(sweep_id))))
        return
    table = Table("id", "name", "trials", "best val acc", "best val loss", "created")
    for s in _call(url, lambda c: c.sweeps()):
        table.add_row(str(s.id), s.name, f"{s.finished}/{s.trials} finished", _fmt(s.best_val_accuracy),
                      _fmt(s.best_val_loss), s.created_at.strftime("%Y-%m-%d %H:%M"))  # fmt: skip
    out.print(table)


def _wait_for_trials(client: Client, sweep_id: int) -> SweepPublic:
    """Poll until every trial has finished, with a bar of trials done."""
    with Progress(TextColumn("trials"), BarColumn(), MofNCompleteColumn(), console=out, transient=True) as bar:
        task = bar.add_task("trials", total=None)
        while True:
            try:
                current = client.sweep(sweep_id)
            except APIError as exc:
                if exc.status_code != 503:  # the server's database briefly unreachable: ask again
                    raise
            else:
                done = sum(t.status in FINISHED for t in current.trials)
                bar.update(task, completed=done, total=len(current.trials))
                if done == len(current.trials):
                    return current
            time.sleep(1.0)


def _trials_table(found: SweepPublic) -> Table:
    """The trials best first: the values tried, status, best epoch and its validation metrics, and what the curves
    show where any trial's show something."""
    paths = list(dict.fromkeys(path for t in found.trials for path in t.params))
    shown = any(t.findings for t in found.trials)
    table = Table("rank", "experiment", *paths, "status", "best epoch", "val acc", "val loss",
                  *(["curves show"] if shown else []), title=f"sweep {found.id}: {found.name}")  # fmt: skip
    for rank, t in enumerate(found.trials, 1):
        values = [_fmt(t.params.get(path)) for path in paths]
        findings = [", ".join(SHORT_NAMES[kind] for kind in t.findings)] if shown else []
        table.add_row(str(rank), str(t.experiment_id), *values, t.status, _fmt(t.best_epoch),
                      _fmt(t.best_val_accuracy), _fmt(t.best_val_loss), *findings)  # fmt: skip
    return table


@app.command()
def datasets(
    name: Annotated[str | None, typer.Argument(help="one dataset: its classes and their counts")] = None,
    url: Url = DEFAULT_URL,
) -> None:
    """The datasets this server has, built in and uploaded; or one of them."""
    if name is not None:
        _show_dataset(_call(url, lambda c: c.dataset(name)))
        return
    table = Table(Column("name", no_wrap=True), "source", Column("task", no_wrap=True), "classes", "input", "size",
                  "here")  # fmt: skip
    for d in _call(url, lambda c: c.datasets()):
        available = "yes" if d["available"] else "no"
        table.add_row(d["name"], d["source"], d["task"], str(len(d["class_names"])), _shape(d["input_shape"]),
                      str(d["size"]), available)  # fmt: skip
    out.print(table)


def _show_dataset(d: dict) -> None:
    out.print(Text.assemble((d["name"], "bold"), f" ({d['source']}, {d['task']}): {d['description']}"))
    out.print(f"input {_shape(d['input_shape'])}, {d['size']:,} examples")
    if d["feature_names"]:
        out.print(f"features: {', '.join(d['feature_names'])}")
    counts = d["counts"] or {}
    splits = [split for split, per_class in counts.items() if isinstance(per_class, dict)]
    if d["task"] == "regression":
        out.print(f"target: {d['class_names'][0]}")
    elif not splits:  # a table, or a built-in dataset whose files this server lacks
        out.print(f"classes: {', '.join(d['class_names'])}")
    else:
        table = Table("class", *splits)  # images: a row per class, a column per split
        for class_name in d["class_names"]:
            table.add_row(class_name, *(str(counts[split].get(class_name, 0)) for split in splits))
        out.print(table)
    if d.get("features"):  # what a row's values are like, for `predict` from a CSV
        features = Table("feature", "mean", "min", "max")
        for f in d["features"]:
            features.add_row(f["name"], *("" if f[k] is None else f"{f[k]:.4g}" for k in ("mean", "min", "max")))
        out.print(features)


@app.command()
def upload(
    name: Annotated[str, typer.Argument(help="how specs will name it (dataset.name)")],
    source: Annotated[Path, typer.Argument(help="a folder or .zip in ImageFolder layout, or a .csv table")],
    target: Annotated[str | None, typer.Option(help="CSV: the column to predict")] = None,
    task: Annotated[str | None, typer.Option(help="CSV: regression (default) or classification")] = None,
    image_size: Annotated[int | None, typer.Option(help="resize every image to this square (photos)")] = None,
    url: Url = DEFAULT_URL,
) -> None:
    """Upload a dataset: a folder or .zip with train/<class>/*.png (and optionally val/<class>/), or a CSV."""
    if not source.exists():
        raise _fail(f"no such file or folder: {source}", EXIT_USAGE)
    try:
        uploaded = _call(url, lambda c: c.upload_dataset(name, source, target=target, task=task, image_size=image_size))
    except ClientError as exc:  # nothing sent: the folder is not in ImageFolder layout
        raise _fail(str(exc), EXIT_USAGE) from None
    _show_dataset(uploaded)


def main() -> None:
    sys.exit(app())


if __name__ == "__main__":
    main()
