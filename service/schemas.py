"""What the API returns. Requests are `service.specs` models; these are the public views of stored state."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum

from pydantic import BaseModel

from service.specs import ExperimentSpec


class Status(StrEnum):
    queued = "queued"
    running = "running"
    succeeded = "succeeded"
    failed = "failed"
    cancelled = "cancelled"


class BestEpoch(BaseModel):
    epoch: int
    val_accuracy: float
    val_loss: float


class ExperimentPublic(BaseModel):
    id: int
    name: str
    status: Status
    spec: ExperimentSpec
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    current_epoch: int
    epochs: int
    best: BestEpoch | None
    attempt: int
    worker_id: str | None
    device: str | None
    error: str | None


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
