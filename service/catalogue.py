"""What the API checks about a spec before anything is queued: the dataset exists here, and what to warn about."""

from __future__ import annotations

from pathlib import Path

from service.errors import InvalidInput
from service.specs import ExperimentSpec
from worker.augment import augmentation_warnings
from worker.datasets import DatasetInfo, DatasetUnavailable, UnknownDataset, check_available


def dataset_for(spec: ExperimentSpec, data_dir: Path, loc: tuple[str, ...] = ("body",)) -> DatasetInfo:
    try:
        return check_available(spec.dataset.name, data_dir)
    except (UnknownDataset, DatasetUnavailable) as exc:
        raise InvalidInput(str(exc), loc=[*loc, "dataset", "name"]) from None


def check_spec(spec: ExperimentSpec, data_dir: Path, loc: tuple[str, ...] = ("body",)) -> list[str]:
    """Refuse a spec that cannot run here (422 naming the field); return the warnings it deserves."""
    info = dataset_for(spec, data_dir, loc)
    return augmentation_warnings(
        spec.augment,
        dataset=info.name,
        channels=info.preprocess.channels,
        orientation_matters=info.orientation_matters,
    )
