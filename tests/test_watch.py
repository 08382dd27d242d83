"""Watching experiments through a real server and worker: the SSE stream and its replay, logs, CSV, Prometheus,
and the `trainlab` command line run as a subprocess."""

from __future__ import annotations

import csv
import io
import json
import re
import subprocess
import sys
import zipfile
from pathlib import Path

import httpx
import pytest
import torch
from PIL import Image, ImageOps
from prometheus_client.parser import text_string_to_metric_families
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.plugins.hparams.plugin_data_pb2 import HParamsPluginData

from service.client import Client, Event, _parse_sse
from service.specs import DatasetSpec
from tests.conftest import REPO, deployment, free_port, run_cli, tiny_spec, wait_for_status
from tests.datafiles import CIFAR_MINI, diabetes_csv
from worker.datasets import load_dataset

# A CNN on MNIST: epochs of about two seconds, so that progress events come inside them.
WATCHED = {"name": "watched", "dataset": {"name": "mnist-10k"}, "model": {"kind": "cnn", "channels": [16, 32]},
           "epochs": 3}  # fmt: skip


def _read_events(response: httpx.Response, until=lambda e: False) -> list[Event]:
    events = []
    for event in _parse_sse(response.iter_lines()):
        events.append(event)
        if until(event):
            break
    return events


def test_event_stream_replays_what_a_dropped_connection_missed(tmp_path: Path, db_url: str, client_for) -> None:
    fast = {"TRAINLAB_PROGRESS_INTERVAL_S": "0.2", "TRAINLAB_EVENTS_POLL_S": "0.1"}
    with deployment(tmp_path, db_url, **fast) as dep:
        client = client_for(dep)
        experiment_id = client.post("/experiments", json=WATCHED).json()["id"]
        # No worker yet: the stream says where the job stands in the queue, and why it waits.
        with client.stream("GET", f"/experiments/{experiment_id}/events") as response:
            assert response.headers["content-type"].startswith("text/event-stream")
            first = _read_events(response, until=lambda e: e.kind == "queue")
        assert first[0].kind == "status" and first[0].data == {"status": "queued"}
        assert first[-1].data["position"] == 1 and "none is running" in first[-1].data["waiting_for"]

        dep.start_worker()
        # Dropped after the first epoch...
        with client.stream("GET", f"/experiments/{experiment_id}/events") as response:
            before = _read_events(response, until=lambda e: e.kind == "epoch")
        last_id = max(e.id for e in before if e.id is not None)
        # ...and resumed from the last event seen: the rest, nothing twice.
        with client.stream(
            "GET", f"/experiments/{experiment_id}/events", headers={"Last-Event-ID": str(last_id)}, timeout=300
        ) as response:
            after = _read_events(response)  # the server ends the stream when the experiment finishes
        assert all(e.id > last_id for e in after if e.id is not None)
        events = [e for e in before + after if e.id is not None]
        ids = [e.id for e in events]
        assert ids == sorted(set(ids))
        statuses = [e.data["status"] for e in events if e.kind == "status"]
        assert statuses == ["queued", "running", "succeeded"]
        epochs = [e.data for e in events if e.kind == "epoch"]
        assert [e["epoch"] for e in epochs] == [1, 2, 3]
        assert epochs == [m.model_dump() for m in Client(dep.url).metrics(experiment_id)]
        progress = [e.data for e in events if e.kind == "progress"]
        assert progress, "no progress event inside an epoch"
        for p in progress:
            assert 0 < p["batch"] < p["batches"] == 125  # 8,000 training images, batches of 64
            assert p["loss"] > 0 and p["samples_per_s"] > 0
            assert p["eta_epoch_s"] >= 0 and p["eta_run_s"] >= p["eta_epoch_s"]
        assert any("epoch=3/3" in e.data["message"] for e in events if e.kind == "log")

        # Afterwards the whole history replays, then the stream ends; progress is kept only for the live epoch.
        with client.stream("GET", f"/experiments/{experiment_id}/events") as response:
            history = _read_events(response)
        assert [e.kind for e in history if e.kind != "log"] == ["status", "status", "epoch", "epoch", "epoch", "status"]
        assert client.get("/experiments/999/events").status_code == 404


def test_logs_csv_compare_and_prometheus(tmp_path: Path, db_url: str, client_for) -> None:
    with deployment(tmp_path, db_url, workers=1) as dep:
        client = client_for(dep)
        ids = [client.post("/experiments", json=tiny_spec(epochs=e)).json()["id"] for e in (2, 3)]
        for i in ids:
            assert wait_for_status(client, i, {"succeeded", "failed"})["status"] == "succeeded"
        image = io.BytesIO()
        Image.new("L", (8, 8), 200).save(image, format="PNG")
        for _ in range(3):
            assert client.post(f"/experiments/{ids[0]}/predict", files={"file": ("x.png", image.getvalue())}).is_success

        logs = client.get(f"/experiments/{ids[1]}/logs").json()
        messages = [line["message"] for line in logs]
        assert "claimed" in messages[0] and any("epoch=3/3 " in m and "val_accuracy=" in m for m in messages)
        assert messages[-1].endswith("succeeded") and {line["level"] for line in logs} == {"INFO"}

        response = client.get(f"/experiments/{ids[1]}/metrics.csv")
        assert response.headers["content-type"].startswith("text/csv")
        rows = list(csv.DictReader(io.StringIO(response.text)))
        assert [int(r["epoch"]) for r in rows] == [1, 2, 3] and float(rows[2]["val_accuracy"]) > 0.5
        assert rows[0]["val_r2"] == ""  # a classifier records no regression metrics
        # A column a value: the loss curve within each epoch (20 points; tests/test_engine.py) is in the JSON.
        assert "train_loss_curve" not in rows[0]
        assert [len(m["train_loss_curve"]) for m in client.get(f"/experiments/{ids[1]}/metrics").json()] == [20] * 3
        for metric in ("val_loss", "train_loss"):  # the training loss with each run's loss within its epochs
            png = client.get("/experiments/compare.png", params={"ids": ",".join(map(str, ids)), "metric": metric})
            assert png.status_code == 200 and Image.open(io.BytesIO(png.content)).format == "PNG"
        assert client.get("/experiments/compare.png", params={"ids": "1,x"}).status_code == 422

        families = {f.name: f for f in text_string_to_metric_families(client.get("/metrics").text)}
        samples = {(s.name, tuple(sorted(s.labels.items()))): s.value for f in families.values() for s in f.samples}
        assert samples[("trainlab_experiments", (("status", "succeeded"),))] == 2
        assert samples[("trainlab_queue_depth", ())] == 0
        assert samples[("trainlab_epochs_trained_total", ())] == 5
        train_size = len(load_dataset(DatasetSpec(name="digits"), tmp_path).train)  # about 80% of 1,797
        assert samples[("trainlab_samples_trained_total", ())] == 5 * train_size
        assert samples[("trainlab_epoch_duration_seconds_count", ())] == 5
        assert samples[("trainlab_predict_latency_seconds_count", ())] == 3
        worker = [s for s in families["trainlab_worker_last_seen_seconds"].samples]
        assert len(worker) == 1 and 0 <= worker[0].value < 30

        # TensorBoard: the files the worker wrote, as the API zips them, read back by TensorBoard's own reader.
        zipped = client.get(f"/experiments/{ids[1]}/tensorboard.zip")
        assert zipped.status_code == 200, zipped.text
        zipfile.ZipFile(io.BytesIO(zipped.content)).extractall(tmp_path / "tb")
        board = EventAccumulator(str(tmp_path / "tb" / str(ids[1])), size_guidance={"scalars": 0, "images": 0})
        board.Reload()
        recorded = client.get(f"/experiments/{ids[1]}/metrics").json()
        for tag, field in (("loss/val", "val_loss"), ("accuracy/val", "val_accuracy"), ("optim/lr", "lr")):
            assert [(s.step, s.value) for s in board.Scalars(tag)] == [
                (r["epoch"], pytest.approx(r[field], rel=1e-6)) for r in recorded
            ]
        # The loss within each epoch, a point each twentieth of an epoch: step 20 is epoch 1's end.
        assert [(s.step, s.value) for s in board.Scalars("loss/train_within_epochs")] == [
            (20 * (r["epoch"] - 1) + k + 1, pytest.approx(v, rel=1e-6))
            for r in recorded for k, v in enumerate(r["train_loss_curve"])
        ]  # fmt: skip
        assert "data/training_images" in board.Tags()["images"]
        session = board.PluginTagToContent("hparams")["_hparams_/session_start_info"]
        start = HParamsPluginData.FromString(session).session_start_info
        assert start.hparams["optimizer.lr"].number_value == pytest.approx(0.001)
        assert start.hparams["model.kind"].string_value == "mlp" and start.hparams["epochs"].number_value == 3
        assert client.get("/experiments/999/tensorboard.zip").status_code == 404


def test_cli_compare_shows_lists_that_differ_item_by_item() -> None:
    """Two CNNs that differ in layer order show the swapped layers, not two long lists."""
    from service.compare import difference_rows

    relu_pool = [{"kind": "conv2d", "out_channels": 8}, {"kind": "relu"}, {"kind": "maxpool2d", "kernel_size": 2}]
    pool_relu = [relu_pool[0], relu_pool[2], relu_pool[1]]
    assert list(difference_rows("model.layers", [relu_pool, pool_relu])) == [
        ("model.layers.1", ["relu()", "maxpool2d(kernel_size=2)"]),
        ("model.layers.2", ["maxpool2d(kernel_size=2)", "relu()"]),
    ]
    flips = [{"kind": "hflip", "p": 0.5}]
    assert list(difference_rows("augment", [[], flips])) == [("augment", ["[]", "[hflip(p=0.5)]"])]


def test_cli_watch_says_when_a_frozen_backbones_features_are_being_computed() -> None:
    from service.cli import _progress_fields

    training = {"epoch": 2, "epochs": 4, "batch": 3, "batches": 8, "loss": 0.25, "samples_per_s": 812.4,
                "eta_epoch_s": 1.0, "eta_run_s": 9.0}  # fmt: skip
    assert _progress_fields(training) == {"epoch": "2/4", "loss": "0.2500", "rate": "812 samples/s"}
    features = {"epoch": 1, "epochs": 4, "stage": "features", "batch": 3, "batches": 8, "samples_per_s": 31.6,
                "eta_s": 4.2}  # fmt: skip
    assert _progress_fields(features) == {
        "epoch": "1/4 (the frozen backbone's features)", "loss": "-", "rate": "32 samples/s",
    }  # fmt: skip


def _table_rows(text: str) -> set[tuple[str, ...]]:
    """The cells of each one-line row of rich's tables in `text`."""
    return {tuple(cell.strip() for cell in line.strip("│ ").split("│")) for line in text.splitlines() if "│" in line}


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)  # about the command line, not the database
def test_cli_submit_watch_predict_and_exit_codes(tmp_path: Path, db_url: str) -> None:
    spec_file = tmp_path / "spec.yaml"
    spec_file.write_text("name: from yaml\ndataset: {name: mnist-10k}\nmodel: {kind: mlp, hidden: [64]}\nepochs: 2\n")
    # Nothing listening: exit code 3, and the message says so.
    down = run_cli("list", url=f"http://127.0.0.1:{free_port()}", cwd=REPO)
    assert down.returncode == 3 and "no trainlab server" in down.stderr
    with deployment(tmp_path, db_url, workers=1) as dep:
        watched = run_cli("submit", str(spec_file), "--watch", url=dep.url, cwd=REPO)
        assert watched.returncode == 0, watched.stdout + watched.stderr
        assert "experiment 1 queued" in watched.stdout and "succeeded" in watched.stdout
        assert "epoch 2/2 " in watched.stdout and "val acc" in watched.stdout

        listed = run_cli("list", url=dep.url, cwd=REPO)
        assert listed.returncode == 0 and "from yaml" in listed.stdout and "succeeded" in listed.stdout
        shown = run_cli("show", "1", url=dep.url, cwd=REPO)
        assert shown.returncode == 0 and '"kind": "mlp"' in shown.stdout
        predicted = run_cli(
            "predict", "1", str(REPO / "examples" / "images" / "mnist-val-7.png"), url=dep.url, cwd=REPO
        )
        assert predicted.returncode == 0 and predicted.stdout.startswith("7 "), predicted.stdout
        assert "warning" not in predicted.stderr, predicted.stderr
        seven = Image.open(REPO / "examples" / "images" / "mnist-val-7.png").convert("L")
        ImageOps.invert(seven).save(tmp_path / "i.png")  # dark on light, where MNIST's digits are light on dark
        inverted = run_cli("predict", "1", str(tmp_path / "i.png"), url=dep.url, cwd=REPO)
        assert inverted.returncode == 0 and "warning: mean brightness = 0.9" in inverted.stderr, inverted.stderr
        confusion = run_cli("confusion", "1", url=dep.url, cwd=REPO)
        matrix = [row for row in _table_rows(confusion.stdout) if len(row) == 12 and row[0].isdigit()]
        assert confusion.returncode == 0 and "validation accuracy" in confusion.stdout, confusion.stderr
        assert len(matrix) == 10 and sum(int(n) for row in matrix for n in row[1:11]) == 2000  # mnist-10k's val
        hint = re.search(r"to see them: trainlab (mistakes 1 --true \d --predicted \d)", confusion.stdout)
        assert hint is not None, confusion.stdout
        shown = run_cli(*hint.group(1).split(), "-o", str(tmp_path / "m.png"), url=dep.url, cwd=REPO)
        assert shown.returncode == 0 and Image.open(tmp_path / "m.png").format == "PNG", shown.stderr
        wrong = run_cli("mistakes", "1", "--true", "10", url=dep.url, cwd=tmp_path)
        assert wrong.returncode != 0 and "true=10 is no class of this model" in wrong.stderr, wrong.stderr
        curves = run_cli("curves", "1", "-o", str(tmp_path / "c.png"), url=dep.url, cwd=REPO)
        assert curves.returncode == 0 and Image.open(tmp_path / "c.png").format == "PNG"
        layers = run_cli("activations", "1", str(REPO / "examples/images/mnist-val-7.png"), url=dep.url, cwd=tmp_path)
        assert layers.returncode == 0 and Image.open(tmp_path / "activations.png").format == "PNG", layers.stderr
        assert run_cli("activations", "1", str(tmp_path / "none.png"), url=dep.url, cwd=tmp_path).returncode == 2
        grads = run_cli("gradients", "1", url=dep.url, cwd=REPO)
        layers = [row[:2] for row in _table_rows(grads.stdout) if row[0].endswith(" linear")]
        assert grads.returncode == 0 and sorted(layers) == [("1 linear", "50,176"), ("3 linear", "640")], grads.stdout
        assert any(row[:2] == ("2 relu", "64") and row[2].endswith("%") for row in _table_rows(grads.stdout))
        drawn = run_cli("weights", "1", url=dep.url, cwd=tmp_path)
        assert drawn.returncode == 0 and Image.open(tmp_path / "weights.png").format == "PNG", drawn.stderr
        salient = run_cli("saliency", "1", str(REPO / "examples/images/mnist-val-7.png"), url=dep.url, cwd=tmp_path)
        assert salient.returncode == 0 and Image.open(tmp_path / "saliency.png").format == "PNG", salient.stderr
        saved = run_cli("checkpoint", "1", "--code", url=dep.url, cwd=tmp_path)  # named after the best epoch
        with Client(dep.url) as sdk:
            best = sdk.get(1).best.epoch
        assert saved.returncode == 0 and f"wrote experiment-1-epoch-{best}.pt" in saved.stdout, saved.stdout
        assert torch.load(tmp_path / f"experiment-1-epoch-{best}.pt", weights_only=True)["epoch"] == best
        # The model as a PyTorch script: it loads the checkpoint and gives /predict's answer, without trainlab.
        assert "wrote experiment-1-model.py" in saved.stdout, saved.stdout
        image = str(REPO / "examples" / "images" / "mnist-val-7.png")
        script = subprocess.run(
            [sys.executable, "experiment-1-model.py", f"experiment-1-epoch-{best}.pt", image],
            cwd=tmp_path, capture_output=True, text=True, timeout=120, check=False,
        )  # fmt: skip
        assert script.returncode == 0 and script.stdout.startswith("7\t"), script.stdout + script.stderr
        missing = httpx.get(f"{dep.url}/experiments/99/model.py", timeout=30)
        assert missing.status_code == 404 and "experiment 99" in missing.text, missing.text
        unwritable = run_cli("checkpoint", "1", "-o", str(tmp_path / "no" / "such.pt"), url=dep.url, cwd=tmp_path)
        assert unwritable.returncode == 2 and "cannot write" in unwritable.stderr, unwritable.stderr
        assert "mnist-10k" in run_cli("datasets", url=dep.url, cwd=REPO).stdout

        sweep_file = tmp_path / "sweep.yaml"
        sweep_file.write_text("name: two lrs\nbase: {dataset: {name: digits}, model: {kind: mlp, hidden: [32]}, "
                              "epochs: 3, augment: [{kind: vflip}]}\ngrid: {optimizer.lr: [0.5]}\n")  # fmt: skip
        overrides = ("-s", "base.epochs=2", "-s", "grid.optimizer.lr=[0.00001, 0.01]")  # a grid key has dots
        swept = run_cli("sweep", str(sweep_file), *overrides, "--watch", url=dep.url, cwd=REPO)
        assert swept.returncode == 0, swept.stdout + swept.stderr
        assert "sweep 1 queued: two lrs, 2 trials (experiments 2, 3)" in swept.stdout
        assert "warning: optimizer.lr=1e-05: augment[0] (vflip): digits holds digits" in swept.stderr, swept.stderr
        ranked = [line for line in swept.stdout.splitlines() if "succeeded" in line]
        assert len(ranked) == 2 and "0.01 " in ranked[0] and "1e-05" in ranked[1], swept.stdout  # best first
        # What the curves show: at 1e-05 the loss barely moves (2.350 → 2.345 at seed 0) and stays at chance.
        assert "not learning" in ranked[1] and "not learning" not in ranked[0], swept.stdout
        with Client(dep.url) as sdk:
            assert sdk.sweep(1).request.base.epochs == 2
        assert "2/2 finished" in run_cli("sweeps", url=dep.url, cwd=REPO).stdout
        assert run_cli("sweeps", "1", url=dep.url, cwd=REPO).stdout.count("succeeded") == 2
        assert "2 of 2" in run_cli("list", "--sweep", "1", url=dep.url, cwd=REPO).stdout
        for sort, first, second in (("oldest", "1e-05", "0.01"), ("val_accuracy", "0.01", "1e-05")):
            listed = run_cli("list", "--sweep", "1", "--sort", sort, url=dep.url, cwd=REPO).stdout
            assert listed.index(first) < listed.index(second), (sort, listed)
        with Client(dep.url) as sdk:
            assert [e.id for e in sdk.list(sweep=1, sort="val_loss").items] == [3, 2]
        mine = run_cli("list", "--name", "YAML", "--dataset", "mnist-10k", url=dep.url, cwd=REPO).stdout
        assert "from yaml" in mine and "1 of 1" in mine, mine
        edited = run_cli("edit", "1", "--tag", "yaml", "-t", "mlp", "--notes", "first try", url=dep.url, cwd=REPO)
        assert edited.returncode == 0 and "experiment 1: from yaml [mlp yaml]" in edited.stdout, edited.stdout
        assert "[yaml]" in run_cli("edit", "1", "--untag", "mlp", url=dep.url, cwd=REPO).stdout
        tagged = run_cli("list", "--tag", "yaml", url=dep.url, cwd=REPO).stdout
        assert "from yaml" in tagged and "1 of 1" in tagged, tagged
        shown = run_cli("show", "1", url=dep.url, cwd=REPO).stdout
        assert "tags: yaml" in shown and "first try" in shown, shown
        nothing = run_cli("edit", "1", url=dep.url, cwd=REPO)
        assert nothing.returncode == 2 and "nothing to change" in nothing.stderr, nothing.stderr
        with Client(dep.url) as sdk:
            assert sdk.update(1, notes="", tags=["yaml", "mnist"]).tags == ["mnist", "yaml"]
            assert [e.notes for e in sdk.list(tags=["mnist", "yaml"]).items] == [""]
            assert sdk.update(1, add_tags=["cnn"], remove_tags=["mnist"]).tags == ["cnn", "yaml"]

        # --set changes the file's spec; a name with rich's markup in it is printed as it is. Adam at 0.1 overshoots
        # (the training loss at 23-33 within the epoch at seeds 0-2), and `watch` and `show` say so under the table.
        named = "lr [0.1] [/] [red]"
        tweaked = run_cli("submit", str(spec_file), "--set", "optimizer.lr=0.1", "-s", "epochs=1", "-s", f"name={named}",
                       "--watch", url=dep.url, cwd=REPO)  # fmt: skip
        assert tweaked.returncode == 0, tweaked.stdout + tweaked.stderr
        assert f"experiment 4 queued: {named}" in tweaked.stdout
        assert "Steps too large: the training loss reached" in tweaked.stdout, tweaked.stdout
        with Client(dep.url) as sdk:
            spec = sdk.get(4).spec
            assert [finding.kind for finding in sdk.diagnosis(4)] == ["overshooting"]
            assert sdk.diagnosis(1) == []
        assert (spec.name, spec.optimizer.kind, spec.optimizer.lr, spec.epochs) == (named, "adam", 0.1, 1)
        assert named in run_cli("list", url=dep.url, cwd=REPO).stdout
        shown = run_cli("show", "4", url=dep.url, cwd=REPO).stdout
        assert named in shown and "Steps too large" in shown, shown
        compared = run_cli("compare", "1", "4", url=dep.url, cwd=REPO)
        assert compared.returncode == 0, compared.stderr
        assert {("optimizer.lr", "0.001", "0.1"), ("epochs", "2", "1")} <= _table_rows(compared.stdout)
        assert run_cli("compare", "1", "4", "--metric", "val_r2", url=dep.url, cwd=REPO).returncode == 2
        rerun = run_cli("rerun", "4", "--watch", url=dep.url, cwd=REPO)
        assert rerun.returncode == 0 and f"experiment 5 queued: {named} (a rerun of 4)" in rerun.stdout, rerun.stderr

        # validate: the layers' shapes, nothing queued.
        cnn = REPO / "examples" / "cnn-relu-then-pool.json"
        validated = run_cli("validate", str(cnn), "-s", "dataset.name=mnist-10k", url=dep.url, cwd=REPO)
        assert validated.returncode == 0, validated.stderr
        assert {("2", "maxpool2d", "32x14x14", "0"), ("9", "linear", "10", "1,290")} <= _table_rows(validated.stdout)
        assert "421,642 parameters" in validated.stdout
        wide = run_cli("validate", str(cnn), "-s", "model.layers.2.kernel_size=1", url=dep.url, cwd=REPO)
        assert wide.returncode == 0 and "32x28x28" in wide.stdout  # a 1x1 pool keeps the size
        no_layer = run_cli("validate", str(cnn), "-s", "model.layers.10.kind=relu", url=dep.url, cwd=REPO)
        assert no_layer.returncode == 2 and "model.layers holds no '10'" in no_layer.stderr
        assert run_cli("validate", str(cnn), "-s", "epochs", url=dep.url, cwd=REPO).returncode == 2
        assert run_cli("validate", str(cnn), "-s", "epochs=0", url=dep.url, cwd=REPO).returncode == 4
        # No file: --set builds the spec from nothing; "-" reads it, JSON or YAML, from standard input.
        built = run_cli(
            "validate", "-s", "dataset.name=digits", "-s", "model.kind=mlp", "--code", url=dep.url, cwd=REPO
        )
        assert built.returncode == 0 and "linear" in built.stdout, built.stdout + built.stderr
        assert "nn.Linear(in_features=64, out_features=256)," in built.stdout, built.stdout
        as_json = json.dumps({"dataset": {"name": "mnist-10k"}, "model": {"kind": "mlp"}}, indent="\t")
        for text in (spec_file.read_text(), as_json):
            piped = run_cli("validate", "-", "-s", "model.hidden=[8]", url=dep.url, cwd=REPO, stdin=text)
            assert piped.returncode == 0 and "6,370 parameters, 6,370 trainable" in piped.stdout, piped.stderr
            assert (  # parts under a MiB in KiB, not "0 MiB"
                "about 38 MiB at batch size 64 (weights 25 KiB, gradients 25 KiB, optimizer state 50 KiB, "
                "activations 590 KiB, data 37 MiB)" in piped.stdout
            )
        nothing = run_cli("submit", url=dep.url, cwd=REPO)
        assert nothing.returncode == 2 and "--set dataset.name=" in nothing.stderr, nothing.stderr
        garbled = run_cli("validate", "-", url=dep.url, cwd=REPO, stdin="{not: [closed")
        assert garbled.returncode == 2 and "standard input is not valid" in garbled.stderr, garbled.stderr
        with Client(dep.url) as sdk:
            assert sdk.list().total == 5  # validate queued nothing

        # upload: a folder in ImageFolder layout is zipped on the way (its README left out); a CSV names its target.
        uploaded = run_cli("upload", "cifar-mini", str(CIFAR_MINI), url=dep.url, cwd=REPO)
        assert uploaded.returncode == 0, uploaded.stderr
        assert ("cat", "200", "50") in _table_rows(uploaded.stdout)
        assert ("cat", "200", "50") in _table_rows(run_cli("datasets", "cifar-mini", url=dep.url, cwd=REPO).stdout)
        no_layout = run_cli("upload", "shared", str(CIFAR_MINI.parent), url=dep.url, cwd=REPO)
        assert no_layout.returncode == 2 and "has no train/ folder" in no_layout.stderr
        table = tmp_path / "kinds.csv"
        table.write_text("a,b,kind\n1,2,x\n3,4,y\n5,6,x\n")
        as_regression = run_cli("upload", "kinds", str(table), "--target", "kind", url=dep.url, cwd=REPO)
        assert as_regression.returncode == 4 and "pass task=classification" in as_regression.stderr
        as_classes = run_cli("upload", "kinds", str(table), "--target", "kind", "--task", "classification",
                          url=dep.url, cwd=REPO)  # fmt: skip
        assert as_classes.returncode == 0 and "features: a, b\nclasses: x, y" in as_classes.stdout, as_classes.stderr

        # predict a CSV's rows with a model trained on a table: a header picks the features by name, in any order.
        regression = REPO / "examples" / "diabetes-linear-regression.json"
        trained = run_cli("submit", str(regression), "-s", "epochs=2", "--watch", url=dep.url, cwd=REPO)
        assert trained.returncode == 0, trained.stdout + trained.stderr
        linear = re.search(r"experiment (\d+) queued", trained.stdout).group(1)
        header, *rows = [line.split(",") for line in diabetes_csv().decode().splitlines()[:4]]
        assert header[10] == "progression"
        backwards = [10, *range(9, -1, -1)]  # the target first, then the features in reverse
        (tmp_path / "named.csv").write_text("\n".join(",".join(r[i] for i in backwards) for r in [header, *rows]))
        (tmp_path / "bare.csv").write_text("\n".join(",".join(r[:10]) for r in rows))
        (tmp_path / "semicolons.csv").write_text("\n".join(";".join(r) for r in [header, *rows]))
        (tmp_path / "no-bmi.csv").write_text("\n".join(",".join(r[:2] + r[3:10]) for r in [header, *rows]))
        with Client(dep.url) as sdk:
            expected = sdk.predict_rows(int(linear), [[float(v) for v in r[:10]] for r in rows]).values
        for name in ("named.csv", "bare.csv", "semicolons.csv"):
            predicted = run_cli("predict", linear, str(tmp_path / name), url=dep.url, cwd=REPO)
            assert predicted.returncode == 0, predicted.stderr
            wanted = {(str(i), f"{value:.4g}") for i, value in enumerate(expected, 1)}
            assert wanted <= _table_rows(predicted.stdout), (name, predicted.stdout)
        described = run_cli("datasets", "diabetes", url=dep.url, cwd=REPO).stdout
        assert f"features: {', '.join(header[:10])}\ntarget: progression" in described, described
        assert ("bmi", "26.38", "18", "42.2") in _table_rows(described), described  # each feature's mean and range
        no_bmi = run_cli("predict", linear, str(tmp_path / "no-bmi.csv"), url=dep.url, cwd=REPO)
        assert no_bmi.returncode == 2 and "lacks the model's features bmi" in no_bmi.stderr
        # A row scaled as scikit-learn's copy of the table has it is answered, and pointed out by its row number.
        scaled = "0.0381,0.0507,0.0617,0.0219,-0.0442,-0.0348,-0.0434,-0.0026,0.0199,-0.0176"
        (tmp_path / "scaled.csv").write_text("\n".join([",".join(header[:10]), ",".join(rows[0][:10]), scaled]))
        warned = run_cli("predict", linear, str(tmp_path / "scaled.csv"), url=dep.url, cwd=REPO)
        assert warned.returncode == 0 and "row 1:" not in warned.stderr, warned.stderr
        assert "warning: row 2: age = 0.0381 (learnt from 19 to 79), sex = 0.0507" in warned.stderr, warned.stderr

        bad = tmp_path / "bad.json"
        bad.write_text(json.dumps({"dataset": {"name": "mnist-10k"}, "model": {"kind": "mlp"}, "epochs": 0}))
        refused = run_cli("submit", str(bad), url=dep.url, cwd=REPO)
        assert refused.returncode == 4 and "body.epochs" in refused.stderr
        unreadable = run_cli("submit", str(tmp_path / "missing.json"), url=dep.url, cwd=REPO)
        assert unreadable.returncode == 2 and "cannot read" in unreadable.stderr
        assert run_cli("cancel", "1", url=dep.url, cwd=REPO).returncode == 4  # finished already: 409
        deleted = run_cli("delete", "1", url=dep.url, cwd=REPO)
        assert deleted.returncode == 0 and "experiment 1: deleted" in deleted.stdout
        gone = run_cli("show", "1", url=dep.url, cwd=REPO)
        assert gone.returncode == 4 and "experiment 1 not found" in gone.stderr
