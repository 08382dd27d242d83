"""What the API checks about a spec before anything is queued: the dataset exists here, the run fits the
server's budgets, and what to warn about."""

from __future__ import annotations

from pathlib import Path

from service.errors import InvalidInput
from service.settings import Settings
from service.specs import ExperimentSpec
from worker.augment import augmentation_warnings
from worker.datasets import DatasetInfo, DatasetUnavailable, UnknownDataset, check_available
from worker.models import count_parameters


def dataset_for(spec: ExperimentSpec, data_dir: Path, loc: tuple[str, ...] = ("body",)) -> DatasetInfo:
    try:
        return check_available(spec.dataset.name, data_dir)
    except (UnknownDataset, DatasetUnavailable) as exc:
        raise InvalidInput(str(exc), loc=[*loc, "dataset", "name"]) from None


def check_spec(spec: ExperimentSpec, settings: Settings, loc: tuple[str, ...] = ("body",)) -> list[str]:
    """Refuse a spec that cannot run here (422 naming the field); return the warnings it deserves."""
    info = dataset_for(spec, settings.data_dir, loc)
    parameters = count_parameters(spec.model, info.preprocess.input_shape, info.num_classes)
    if parameters > settings.max_parameters:
        raise InvalidInput(
            f"the model has {parameters:,} parameters; this server allows at most {settings.max_parameters:,} "
            "(TRAINLAB_MAX_PARAMETERS)",
            loc=[*loc, "model"],
        )
    train_samples = round(info.size * (1 - spec.dataset.val_fraction)) * spec.epochs
    if train_samples > settings.max_train_samples:
        raise InvalidInput(
            f"{spec.epochs} epochs of {info.name} are {train_samples:,} training samples; this server allows at most "
            f"{settings.max_train_samples:,} per experiment (TRAINLAB_MAX_TRAIN_SAMPLES)",
            loc=[*loc, "epochs"],
        )
    return augmentation_warnings(
        spec.augment,
        dataset=info.name,
        channels=info.preprocess.channels,
        orientation_matters=info.orientation_matters,
    )
