"""/datasets: the built-in ones and uploads (an ImageFolder zip, or a CSV table), with counts and samples."""

from __future__ import annotations

from dataclasses import asdict
from datetime import datetime
from typing import Annotated, Literal

import torch
from fastapi import APIRouter, File, Form, Path, Response, UploadFile
from pydantic import BaseModel, Field

from service.catalogue import open_dataset
from service.deps import SettingsDep, StoreDep
from service.errors import ERROR_RESPONSES, Conflict, InvalidInput, NotFound, PayloadTooLarge
from service.figures import PNG_RESPONSE, png_response, render_gallery
from service.settings import Settings
from service.specs import DatasetSpec
from service.store import DatasetUpload, Store
from service.uploads import read_csv_table, read_image_zip
from worker.datasets import (
    DatasetInfo,
    DatasetUnavailable,
    UnknownDataset,
    check_available,
    dataset_info,
    dataset_names,
    uploaded_info,
)
from worker.ink import ink_of
from worker.preprocess import Preprocess

router = APIRouter(prefix="/datasets", tags=["datasets"], responses=ERROR_RESPONSES)

DatasetName = Annotated[str, Path(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")]
SAMPLES_PER_CLASS = 2


class Feature(BaseModel):
    """A table's column: its mean and range over the dataset (no range for uploads stored before it was kept)."""

    name: str
    mean: float
    min: float | None
    max: float | None


class InkPublic(BaseModel):
    color: Literal["light", "dark"]
    extent: float = Field(description="the median share of the frame's larger side that the ink's box spans")
    stroke: float = Field(description="the median width of the strokes, as a share of the frame's larger side")


class DatasetPublic(BaseModel):
    name: str
    source: Literal["builtin", "uploaded"]
    task: str
    description: str
    class_names: list[str]  # for regression: the target's name
    input_shape: list[int]  # (C, H, W); tables are (features, 1, 1)
    size: int
    # Builtins: whether this server has the files. Uploads always have their data.
    available: bool
    # Examples per split and class (images) or rows (tables); builtins show them in GET /datasets/{name}.
    counts: dict | None = None
    feature_names: list[str] | None = None
    features: list[Feature] | None = None  # tables: feature_names with each one's mean and range
    # Grayscale images: light on dark or dark on light, the share of the frame the ink's box spans, and how wide
    # its strokes are (the dashboard frames a drawing so). Builtins show it in GET /datasets/{name}; uploads
    # stored before it was measured, never.
    ink: InkPublic | None = None
    created_at: datetime | None = None


def _builtin(name: str, settings: Settings, store: Store, *, with_counts: bool = False) -> DatasetPublic:
    info = dataset_info(name)
    try:
        check_available(name, settings.data_dir)
        available = True
    except DatasetUnavailable:
        available = False
    counts, ink = None, None
    if with_counts and available and info.task == "classification":
        dataset = open_dataset(DatasetSpec(name=name), settings, store)
        counts = {"pool": _class_counts(info, torch.cat([dataset.train.labels, dataset.val.labels]))}
        if dataset.test is not None:
            counts["test"] = _class_counts(info, dataset.test.labels)
        ink = ink_of(dataset.train.images)
    return _public(info, "builtin", available, counts, asdict(ink) if ink else None)


def _class_counts(info: DatasetInfo, labels: torch.Tensor) -> dict[str, int]:
    counts = torch.bincount(labels, minlength=info.num_classes).tolist()
    return dict(zip(info.class_names, counts, strict=True))


def _uploaded(upload: DatasetUpload) -> DatasetPublic:
    info = uploaded_info(upload.name, upload.meta)
    public = _public(info, "uploaded", True, upload.meta["counts"], upload.meta.get("ink"))
    return public.model_copy(update={"created_at": upload.created_at})


def _public(info: DatasetInfo, source, available: bool, counts: dict | None, ink: dict | None) -> DatasetPublic:
    return DatasetPublic(
        name=info.name, source=source, task=info.task, description=info.description,
        class_names=list(info.class_names), input_shape=list(info.preprocess.input_shape), size=info.size,
        available=available, counts=counts,
        feature_names=list(info.feature_names) if info.feature_names else None,
        features=_features(info.preprocess) if info.feature_names else None, ink=ink,
    )  # fmt: skip


def _features(p: Preprocess) -> list[Feature]:
    ranges = zip(p.low, p.high, strict=True) if p.low else [(None, None)] * len(p.feature_names)
    return [
        Feature(name=name, mean=mean, min=low, max=high)
        for name, mean, (low, high) in zip(p.feature_names, p.mean, ranges, strict=True)
    ]


@router.get("", response_model=list[DatasetPublic])
def list_datasets(store: StoreDep, settings: SettingsDep):
    """The built-in datasets (and whether this server has their files), then the uploaded ones."""
    builtin = [_builtin(name, settings, store) for name in dataset_names()]
    return builtin + [_uploaded(d) for d in store.list_datasets()]


@router.post("", status_code=201, response_model=DatasetPublic)
def upload_dataset(
    store: StoreDep,
    settings: SettingsDep,
    response: Response,
    name: Annotated[str, Form(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$", description="how specs will name it")],
    file: Annotated[
        UploadFile,
        File(
            description="a zip in ImageFolder layout (train/<class>/*.png|jpg|webp, optional "
            "val/<class>/...), or a CSV table with a header row"
        ),
    ],  # fmt: skip
    target: Annotated[str | None, Form(max_length=200, description="CSV: the column to predict")] = None,
    task: Annotated[
        Literal["classification", "regression"], Form(description="CSV: what the target is")
    ] = "regression",
    image_size: Annotated[int | None, Form(ge=8, le=512, description="zip: resize every image to this square")] = None,
):
    """Check the whole upload, decode it once, and store it; nothing is stored when any check fails."""
    if name in dataset_names():
        raise Conflict(f"{name!r} is a built-in dataset; pick another name")
    data = file.file.read(settings.max_dataset_bytes + 1)
    if len(data) > settings.max_dataset_bytes:
        raise PayloadTooLarge(f"the upload is over {settings.max_dataset_bytes:,} bytes (TRAINLAB_MAX_DATASET_BYTES)")
    if data[:4] == b"PK\x03\x04" or (file.filename or "").lower().endswith(".zip"):
        upload = read_image_zip(data, settings, image_size)
    elif (file.filename or "").lower().endswith(".csv") or file.content_type in ("text/csv", "application/csv"):
        upload = read_csv_table(data, target, task, settings.max_table_cells)
    else:
        raise InvalidInput("upload a .zip (ImageFolder layout) or a .csv table", loc=["body", "file"])
    stored = store.create_dataset(name, upload.meta, upload.payload)
    response.headers["Location"] = f"/datasets/{name}"
    return _uploaded(stored)


def _find(name: str, store: Store, settings: Settings) -> DatasetPublic:
    if name in dataset_names():
        return _builtin(name, settings, store, with_counts=True)
    upload = store.find_dataset(name)
    if upload is None:
        raise NotFound(f"no dataset named {name!r}; GET /datasets lists them")
    return _uploaded(upload)


@router.get("/{name}", response_model=DatasetPublic)
def get_dataset(name: DatasetName, store: StoreDep, settings: SettingsDep):
    """Classes, counts per split and class, input shape; `/datasets/{name}/samples.png` shows examples."""
    return _find(name, store, settings)


@router.get("/{name}/samples.png", response_class=Response, responses=PNG_RESPONSE)
def get_samples(name: DatasetName, store: StoreDep, settings: SettingsDep):
    """A few training images of each class, as a PNG grid."""
    public = _find(name, store, settings)
    if public.input_shape[1:] == [1, 1]:
        raise Conflict(f"dataset {name!r} is a table: it has no images to show")
    try:
        dataset = open_dataset(DatasetSpec(name=name), settings, store)
    except (UnknownDataset, DatasetUnavailable) as exc:
        raise Conflict(f"this server cannot load dataset {name!r}: {exc}") from None
    labels = dataset.train.labels
    picks = [
        i
        for k in range(len(public.class_names))
        for i in (labels == k).nonzero().flatten()[:SAMPLES_PER_CLASS].tolist()
    ]
    captions = [public.class_names[labels[i]] for i in picks]
    return png_response(render_gallery(dataset.train.images[picks], captions, f"{name}: training samples"))


@router.delete("/{name}", status_code=204, response_class=Response)
def delete_dataset(name: DatasetName, store: StoreDep):
    """Remove an uploaded dataset; 409 for a built-in one or while a queued or running experiment uses it."""
    if name in dataset_names():
        raise Conflict(f"{name!r} is a built-in dataset and cannot be deleted")
    store.delete_dataset(name)
    return Response(status_code=204)
