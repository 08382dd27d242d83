"""Side-by-side views of experiments: where their specs differ, and their metrics per epoch."""

from __future__ import annotations

import json
from collections.abc import Collection, Iterator
from typing import Any, Literal, get_args

from pydantic import BaseModel

from service.errors import InvalidInput
from service.schemas import ExperimentPublic
from service.specs import TASK_METRICS, EpochMetrics

Metric = Literal[
    "train_loss", "train_accuracy", "val_loss", "val_accuracy", "train_mae", "val_mae", "val_rmse", "val_r2", "lr"
]
COMPARED_METRICS: tuple[str, ...] = get_args(Metric)
# What each task records per epoch (the others stay null), and the metric its best epoch is chosen by.
RECORDED: dict[str, tuple[str, ...]] = {
    "classification": ("train_loss", "train_accuracy", *TASK_METRICS["classification"], "lr"),
    "regression": ("train_loss", "train_mae", *TASK_METRICS["regression"], "lr"),
}
HEADLINE = {"classification": "val_accuracy", "regression": "val_loss"}


def chart_metric(tasks: Collection[str], metric: str | None) -> str:
    """The metric to draw for experiments of these tasks: by default their best epochs' metric (val_loss when
    the tasks differ); one that a task does not record is a 422, not an empty chart."""
    if metric is None:
        return HEADLINE[next(iter(tasks))] if len(set(tasks)) == 1 else "val_loss"
    for task in sorted(set(tasks)):
        if metric not in RECORDED[task]:
            raise InvalidInput(
                f"{task} experiments do not record {metric}; they record {', '.join(RECORDED[task])}",
                loc=["query", "metric"],
            )
    return metric


class SpecDifference(BaseModel):
    path: str
    values: list[Any]  # one per experiment, in the order asked; null where the path does not exist


class EpochComparison(BaseModel):
    epoch: int
    values: dict[str, list[float | None]]  # metric -> one value per experiment (null: no such epoch)


class Comparison(BaseModel):
    experiments: list[ExperimentPublic]
    spec_differences: list[SpecDifference]
    # What sets each experiment apart, in brief: its values where the specs differ (`optimizer.lr=0.01,
    # augment=[hflip(p=0.5)]`); a list of one length in every spec (a model's layers) item by item. Empty where
    # the specs are the same.
    labels: list[str]
    epochs: list[EpochComparison]
    # Each experiment's best epoch (highest validation accuracy; lowest validation loss for a regression): its
    # validation accuracy and loss, and those minus the first experiment's.
    best_val_accuracy: list[float | None]
    best_val_accuracy_vs_first: list[float | None]
    best_val_loss: list[float | None]
    best_val_loss_vs_first: list[float | None]


def flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    """Nested dicts to dotted paths; lists stay whole values (an augmentation list is one setting)."""
    if not isinstance(value, dict):
        return {prefix: value}
    flat: dict[str, Any] = {}
    for key, item in value.items():
        flat.update(flatten(item, f"{prefix}.{key}" if prefix else key))
    return flat


def compare(experiments: list[ExperimentPublic], metrics: list[list[EpochMetrics]]) -> Comparison:
    specs = [flatten(e.spec.model_dump(mode="json", exclude={"name"})) for e in experiments]
    paths = sorted({path for spec in specs for path in spec})
    differences = [
        SpecDifference(path=path, values=[spec.get(path) for spec in specs])
        for path in paths
        if len({repr(spec.get(path)) for spec in specs}) > 1
    ]
    brief = [row for d in differences for row in difference_rows(d.path, d.values)]
    labels = [", ".join(f"{path}={texts[i]}" for path, texts in brief) for i in range(len(experiments))]
    by_epoch = [{m.epoch: m for m in rows} for rows in metrics]
    epochs = sorted({epoch for rows in by_epoch for epoch in rows})
    rows = [
        EpochComparison(
            epoch=epoch,
            values={
                name: [getattr(run[epoch], name) if epoch in run else None for run in by_epoch]
                for name in COMPARED_METRICS
            },
        )
        for epoch in epochs
    ]
    accuracy = [e.best.val_accuracy if e.best else None for e in experiments]
    loss = [e.best.val_loss if e.best else None for e in experiments]
    return Comparison(
        experiments=experiments,
        spec_differences=differences,
        labels=labels,
        epochs=rows,
        best_val_accuracy=accuracy,
        best_val_accuracy_vs_first=_minus_first(accuracy),
        best_val_loss=loss,
        best_val_loss_vs_first=_minus_first(loss),
    )


def _minus_first(values: list[float | None]) -> list[float | None]:
    first = values[0]
    return [None if v is None or first is None else v - first for v in values]


def difference_rows(path: str, values: list[Any]) -> Iterator[tuple[str, list[str]]]:
    """One difference as (path, each value in brief) rows: lists of one length everywhere (a model's layers) item
    by item, and only the items that differ, so that the layer order of two CNNs shows as the layers swapped."""
    if all(isinstance(v, list) for v in values) and len({len(v) for v in values}) == 1:
        for index, items in enumerate(zip(*values, strict=True)):
            if len({json.dumps(item) for item in items}) > 1:
                yield f"{path}.{index}", [compact(item) for item in items]
    else:
        yield path, [compact(value) for value in values]


def compact(value: Any) -> str:
    """A spec value in one line: a section with a kind as `kind(field=value, ...)`, a list in brackets, the rest
    as JSON (a string bare). Trial names, comparison labels and the CLI's tables all write values this way."""
    if isinstance(value, dict) and "kind" in value:
        fields = ", ".join(f"{k}={compact(v)}" for k, v in value.items() if k != "kind")
        return f"{value['kind']}({fields})"
    if isinstance(value, list):
        return "[" + ", ".join(map(compact, value)) + "]"
    return value if isinstance(value, str) else json.dumps(value)
