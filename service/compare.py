"""Side-by-side views of experiments: where their specs differ, and their metrics per epoch."""

from __future__ import annotations

from typing import Any, Literal, get_args

from pydantic import BaseModel

from service.schemas import ExperimentPublic
from service.specs import EpochMetrics

Metric = Literal[
    "train_loss", "train_accuracy", "val_loss", "val_accuracy", "train_mae", "val_mae", "val_rmse", "val_r2", "lr"
]
COMPARED_METRICS: tuple[str, ...] = get_args(Metric)


class SpecDifference(BaseModel):
    path: str
    values: list[Any]  # one per experiment, in the order asked; null where the path does not exist


class EpochComparison(BaseModel):
    epoch: int
    values: dict[str, list[float | None]]  # metric -> one value per experiment (null: no such epoch)


class Comparison(BaseModel):
    experiments: list[ExperimentPublic]
    spec_differences: list[SpecDifference]
    epochs: list[EpochComparison]
    best_val_accuracy: list[float | None]
    # Each experiment's best validation accuracy minus the first one's.
    best_val_accuracy_vs_first: list[float | None]


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
    best = [e.best.val_accuracy if e.best else None for e in experiments]
    first = best[0]
    return Comparison(
        experiments=experiments,
        spec_differences=differences,
        epochs=rows,
        best_val_accuracy=best,
        best_val_accuracy_vs_first=[None if b is None or first is None else b - first for b in best],
    )
