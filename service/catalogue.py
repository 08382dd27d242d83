"""What the API checks about a spec before anything is queued: the dataset exists here and suits the task, the
model fits the data (shapes), its pretrained weights are here, the run fits the server's budgets; and what to
warn about. Also where a spec's dataset is opened, built-in or uploaded, for the worker and the API alike."""

from __future__ import annotations

from collections.abc import Sequence

from service.errors import InvalidInput
from service.settings import Settings
from service.specs import DatasetSpec, ExperimentSpec, FromExperiment
from service.store import Store
from worker.augment import augmentation_warnings
from worker.datasets import (
    Dataset,
    DatasetInfo,
    DatasetUnavailable,
    UnknownDataset,
    check_available,
    dataset_info,
    dataset_names,
    load_dataset,
    load_uploaded,
    uploaded_info,
)
from worker.models import BatchError, ShapeError, describe, meta_model
from worker.pretrained import WeightsUnavailable, locate, unfit

Loc = Sequence[str | int]


def dataset_for(spec: ExperimentSpec, settings: Settings, store: Store, loc: Loc = ("body",)) -> DatasetInfo:
    """The spec's dataset: built in (its files here, or to be downloaded) or uploaded; 422 otherwise."""
    name = spec.dataset.name
    try:
        return check_available(name, settings.data_dir)
    except DatasetUnavailable as exc:
        info = dataset_info(name)
        if spec.dataset.download and info.download is not None and settings.allow_downloads:
            return info
        hint = "" if settings.allow_downloads else " (this server does not download: TRAINLAB_ALLOW_DOWNLOADS)"
        raise InvalidInput(f"{exc}{hint if spec.dataset.download else ''}", loc=[*loc, "dataset", "name"]) from None
    except UnknownDataset:
        upload = store.find_dataset(name)
        if upload is None:
            known = ", ".join([*dataset_names(), *(d.name for d in store.list_datasets())])
            raise InvalidInput(f"unknown dataset {name!r}; known datasets: {known}", loc=[*loc, "dataset", "name"])
        return uploaded_info(upload.name, upload.meta)


def class_count(spec: ExperimentSpec, store: Store) -> int | None:
    """A classifier's number of classes; None for a regression, or where its uploaded dataset has been deleted."""
    if spec.task != "classification":
        return None
    try:
        return dataset_info(spec.dataset.name).num_classes
    except UnknownDataset:
        upload = store.find_dataset(spec.dataset.name)
        return None if upload is None else uploaded_info(upload.name, upload.meta).num_classes


def open_dataset(spec: DatasetSpec, settings: Settings, store: Store) -> Dataset:
    """The tensors of a spec's dataset (raises UnknownDataset / DatasetUnavailable / NotFound)."""
    try:
        return load_dataset(spec, settings.data_dir, allow_download=settings.allow_downloads)
    except UnknownDataset:
        upload = store.find_dataset(spec.name)
        if upload is None:
            raise
        return load_uploaded(uploaded_info(upload.name, upload.meta), store.dataset_data(spec.name), spec)


def check_spec(spec: ExperimentSpec, settings: Settings, store: Store, loc: Loc = ("body",)) -> list[str]:
    """Refuse a spec that cannot run here (422 naming the field); return the warnings it deserves."""
    info = dataset_for(spec, settings, store, loc)
    if spec.task != info.task:
        raise InvalidInput(
            f"dataset {info.name!r} is a {info.task} dataset; set task to {info.task!r}", loc=[*loc, "task"]
        )
    if info.tabular and spec.augment:
        raise InvalidInput(f"dataset {info.name!r} is a table: image augmentations do not apply", loc=[*loc, "augment"])
    parameters = _check_model(spec, info, settings, store, loc)
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
    warnings = augmentation_warnings(
        spec.augment,
        dataset=info.name,
        channels=info.preprocess.channels,
        orientation_matters=info.orientation_matters,
    )
    if info.tabular and _has_convolutions(spec):
        warnings.append(
            f"model ({spec.model.kind}): {info.name} is a table, whose rows reach the model as 1x1 maps of features, "
            "so each convolution acts as a linear layer (only its kernel's centre meets data): an mlp does the same "
            "with fewer parameters"
        )
    if spec.compile and getattr(spec.model, "freeze", None) == "backbone" and not spec.augment:
        warnings.append(
            "compile: true compiles nothing here: with the backbone frozen and no augmentation, the backbone's "
            "features are computed once and only the head (a linear layer) trains on them"
        )
    return warnings


def _has_convolutions(spec: ExperimentSpec) -> bool:
    model = spec.model
    if model.kind == "sequential":
        return any(layer.kind == "conv2d" for layer in model.layers)
    return model.kind == "cnn"


def _check_model(spec: ExperimentSpec, info: DatasetInfo, settings: Settings, store: Store, loc: Loc) -> int:
    """The model's parameter count, once it is known to fit the data, to train on batches of `batch_size` and to
    have its weights here."""
    model, shape = spec.model, info.preprocess.input_shape
    try:
        net = meta_model(model, shape, info.num_classes)
        if spec.batch_size == 1:  # only a batch of one can give batchnorm one value per channel
            describe(net, shape, spec.batch_size)
    except ShapeError as exc:
        where = [*loc, "model", "layers", exc.index] if model.kind == "sequential" else [*loc, "model"]
        raise InvalidInput(str(exc), loc=where) from None
    except BatchError as exc:
        raise InvalidInput(str(exc), loc=[*loc, "batch_size"]) from None
    parameters = sum(p.numel() for p in net.parameters())
    pretrained_loc = [*loc, "model", "pretrained"]
    if model.pretrained == "imagenet":
        try:
            locate(model.kind, settings.allow_downloads)
        except WeightsUnavailable as exc:
            raise InvalidInput(str(exc), loc=pretrained_loc) from None
    elif isinstance(model.pretrained, FromExperiment):
        source = store.find_experiment(model.pretrained.experiment)
        if source is None or source.best is None:
            raise InvalidInput(
                f"experiment {model.pretrained.experiment} does not exist or has no trained checkpoint yet",
                loc=pretrained_loc,
            )
        if source.spec.model.kind != model.kind:
            raise InvalidInput(
                f"experiment {source.id} trained a {source.spec.model.kind}, not a {model.kind}", loc=pretrained_loc
            )
        if problems := _weights_unfit(spec, info, source.spec, settings, store):
            raise InvalidInput(
                f"experiment {source.id}'s weights do not fit this model: {'; '.join(problems[:3])}",
                loc=pretrained_loc,
            )
    return parameters


def _weights_unfit(
    spec: ExperimentSpec, info: DatasetInfo, source: ExperimentSpec, settings: Settings, store: Store
) -> list[str]:
    """What keeps the source experiment's weights from initialising this spec's model (both built on the meta
    device, no memory). Nothing, where the source's dataset is gone: the worker checks the weights themselves."""
    try:
        source_info = dataset_for(source, settings, store)
    except InvalidInput:
        return []
    model = meta_model(spec.model, info.preprocess.input_shape, info.num_classes)
    theirs = meta_model(source.model, source_info.preprocess.input_shape, source_info.num_classes)
    return unfit(model, {key: tensor.shape for key, tensor in theirs.state_dict().items()})
