"""FastAPI dependencies, as `Annotated` aliases. Everything hangs off `app.state`, set up by `create_app`.
They are `async` because they only read attributes: a sync dependency costs a thread-pool round trip each."""

from __future__ import annotations

import hashlib
import threading
from typing import Annotated

from fastapi import Depends, Header, Request, Response
from pydantic import BaseModel

from service.cache import LRUCache
from service.predictions import ImagePredictions
from service.settings import Settings
from service.store import Idempotency, Store
from worker.evaluation import Evaluation
from worker.inference import Predictor


async def _store(request: Request) -> Store:
    return request.app.state.store


async def _settings(request: Request) -> Settings:
    return request.app.state.settings


async def _predictors(request: Request) -> LRUCache[Predictor]:
    return request.app.state.predictors


async def _evaluations(request: Request) -> LRUCache[Evaluation]:
    return request.app.state.evaluations


async def _predictions(request: Request) -> ImagePredictions:
    return request.app.state.predictions


async def _gradient_lock(request: Request) -> threading.Lock:
    return request.app.state.gradient_lock


StoreDep = Annotated[Store, Depends(_store)]
SettingsDep = Annotated[Settings, Depends(_settings)]
PredictorsDep = Annotated[LRUCache[Predictor], Depends(_predictors)]
PredictionsDep = Annotated[ImagePredictions, Depends(_predictions)]
EvaluationsDep = Annotated[LRUCache[Evaluation], Depends(_evaluations)]
# Held while a model's gradients are taken: each takes a copy of the model and a batch's activations (~200 MB for
# a ResNet18), so requests take turns rather than adding up.
GradientLock = Annotated[threading.Lock, Depends(_gradient_lock)]

# A client-chosen key that makes a POST safe to retry (Stripe's convention).
IdempotencyKey = Annotated[
    str | None, Header(alias="Idempotency-Key", min_length=1, max_length=200, pattern=r"^[\x21-\x7e]+$")
]


def replayed(model: type[BaseModel]) -> dict[int | str, dict]:
    """The extra documented response of an idempotent POST."""
    return {200: {"model": model, "description": "Replayed: what the first request with this Idempotency-Key made"}}


def mark_replayed(response: Response, created: bool) -> None:
    if not created:
        response.status_code = 200
        response.headers["Idempotent-Replayed"] = "true"


def idempotency(key: str | None, body: BaseModel) -> Idempotency | None:
    """The key and a hash of the validated body (defaults filled in, so equivalent bodies hash alike)."""
    if key is None:
        return None
    return Idempotency(key, hashlib.sha256(body.model_dump_json().encode()).hexdigest())
