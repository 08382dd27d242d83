"""What the API returns: the public views of stored state. Requests are `service.specs` models, but for
ExperimentUpdate, which only the API reads."""

from __future__ import annotations

import re
from datetime import datetime
from enum import StrEnum
from typing import Annotated, Any, Literal, Self

from pydantic import AfterValidator, BaseModel, Field, model_validator
from pydantic_core import PydanticCustomError

from service.specs import ExperimentSpec, Name, Strict

TAG_PATTERN = r"^[\w.:/=+-]{1,64}$"


def _tag(tag: str) -> str:
    if not re.fullmatch(TAG_PATTERN, tag):  # said in words: the pattern's own message is a regular expression
        raise PydanticCustomError(
            "tag",
            "a tag is 1 to 64 letters, digits or _ . : / = + - (no spaces or commas), not '{tag}'",
            {"tag": tag if len(tag) <= 64 else f"{tag[:61]}..."},
        )
    return tag


# A word to find runs by, as in `?tag=flips`.
Tag = Annotated[str, Field(json_schema_extra={"pattern": TAG_PATTERN}, examples=["flips"]), AfterValidator(_tag)]
MAX_TAGS = 20
Tags = Annotated[list[Tag], Field(max_length=MAX_TAGS)]


class Status(StrEnum):
    queued = "queued"
    running = "running"
    succeeded = "succeeded"
    failed = "failed"
    cancelled = "cancelled"


class BestEpoch(BaseModel):
    """Highest validation accuracy (classification) or lowest validation loss (regression)."""

    epoch: int
    val_accuracy: float | None
    val_loss: float


class TestMetrics(BaseModel):
    """The best checkpoint evaluated once on the dataset's held-out test split."""

    __test__ = False  # not a pytest class

    loss: float
    accuracy: float


class ExperimentUpdate(Strict):
    """What a person says of a run after submitting it; a field left out is kept as it is. Training is not
    changed: the name is the spec's `name`, and notes and tags are the run's alone (a rerun starts without them)."""

    name: Name | None = None
    # Lines and tabs, but no NUL (PostgreSQL refuses it) or other control characters.
    notes: Annotated[str, Field(max_length=10_000, pattern=r"^[^\x00-\x08\x0b\x0c\x0e-\x1f\x7f]*$")] | None = None
    tags: Tags | None = None  # replaces the run's tags
    # Added to and taken from the run's tags in one write, so that two edits at the same time both count.
    add_tags: Tags | None = None
    remove_tags: Tags | None = None

    @model_validator(mode="after")
    def _one_way_to_tag(self) -> Self:
        if self.tags is not None and (self.add_tags is not None or self.remove_tags is not None):
            raise ValueError("give tags (the whole list) or add_tags and remove_tags, not both")
        return self


class ExperimentPublic(BaseModel):
    id: int
    name: str
    notes: str
    tags: list[str]  # in alphabetical order
    status: Status
    spec: ExperimentSpec
    warnings: list[str]
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    current_epoch: int
    epochs: int
    best: BestEpoch | None
    attempt: int
    worker_id: str | None
    heartbeat_at: datetime | None
    lease_expires_at: datetime | None
    device: str | None
    environment: dict[str, str] | None
    error: str | None
    stop_reason: str | None
    test: TestMetrics | None
    rerun_of: int | None
    sweep_id: int | None
    sweep_params: dict[str, Any] | None


class AttemptPublic(BaseModel):
    """One claim of an experiment by a worker, and how it ended (null while it runs)."""

    attempt: int
    worker_id: str
    claimed_at: datetime
    ended_at: datetime | None
    outcome: str | None


# How GET /experiments may order them (service.store.LIST_ORDERS).
ListOrder = Literal["newest", "oldest", "val_accuracy", "val_loss"]


class ExperimentList(BaseModel):
    items: list[ExperimentPublic]
    total: int
    limit: int
    offset: int


class ClassProbability(BaseModel):
    label: int
    class_name: str
    probability: float


class Prediction(BaseModel):
    label: int
    class_name: str
    probabilities: list[ClassProbability]
    epoch: int
    # The image's mean brightness where it lies outside the training images' range, with that range (`mean
    # brightness = 0.87 (learnt from 0.03 to 0.33)`: most often light and dark swapped, dark strokes on white for
    # a model of white strokes on black): its prediction extrapolates. Null otherwise.
    outside_training_range: str | None = None


class Confusion(BaseModel):
    epoch: int
    class_names: list[str]
    matrix: list[list[int]]  # rows: true class, columns: predicted class
    # Of each class's images, the share classified right (its recall); null where the split has none of it.
    per_class_accuracy: list[float | None]
    # Of the images classified as each class, the share that were of it; null where none was classified so.
    per_class_precision: list[float | None]
    accuracy: float


class LayerGradientPublic(BaseModel):
    name: str  # its path in the model and its kind: "1 linear", "backbone.layer1.0.conv1 conv2d"
    parameters: int  # in its weight
    weight_rms: float
    gradient_rms: float | None  # null: a frozen layer


class DeadUnitsPublic(BaseModel):
    name: str  # "2 relu"
    units: int  # a map's channels, or features
    # The share of them that output 0 for every example of the sample (at every position of a map): dead ReLUs,
    # through which no gradient passes.
    dead: float


class Gradients(BaseModel):
    """The training loss's gradient at each layer with a weight, in the order of the forward pass, over a sample of
    training examples in training mode, as a training step takes it (no augmentation); and each ReLU layer's dead
    units on that sample."""

    epoch: int
    examples: int
    loss: float
    layers: list[LayerGradientPublic]
    relus: list[DeadUnitsPublic]


FindingKind = Literal["overshooting", "overfitting", "not_learning"]


class Finding(BaseModel):
    """What an experiment's curves show, in words, with what to try (service/diagnosis.py)."""

    kind: FindingKind
    message: str


class RowPredictions(BaseModel):
    epoch: int
    # Regression: the predicted target of each row, in its own units.
    values: list[float] | None = None
    # Classification: each row's classes, most probable first.
    classes: list[list[ClassProbability]] | None = None
    # For each row, its values outside the range the model learnt from, with that range (`bmi = 0.06 (learnt from
    # 18 to 42.2)`): its prediction extrapolates, often a sign of features scaled or ordered otherwise than in
    # training. Null for a row within the range (or where the checkpoint predates ranges being kept).
    outside_training_range: list[str | None]


class SweepSummary(BaseModel):
    id: int
    name: str
    created_at: datetime
    trials: int
    finished: int
    # Over the trials' best epochs: the highest validation accuracy (classification), the lowest validation loss.
    best_val_accuracy: float | None
    best_val_loss: float | None


class EventPublic(BaseModel):
    """One event of an experiment: `status` (a status change), `epoch` (a metrics row), `progress` (inside the
    running epoch) or `log` (a worker's log line)."""

    id: int
    kind: str
    data: dict[str, Any]
    created_at: datetime


class WorkerPublic(BaseModel):
    worker_id: str
    device: str
    started_at: datetime
    last_seen_at: datetime
    experiment_id: int | None
