"""FastAPI dependencies, as `Annotated` aliases. Everything hangs off `app.state`, set up by `create_app`."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from service.cache import LRUCache
from service.settings import Settings
from service.store import Store
from worker.evaluation import Evaluation
from worker.inference import Predictor


def _store(request: Request) -> Store:
    return request.app.state.store


def _settings(request: Request) -> Settings:
    return request.app.state.settings


def _predictors(request: Request) -> LRUCache[Predictor]:
    return request.app.state.predictors


def _evaluations(request: Request) -> LRUCache[Evaluation]:
    return request.app.state.evaluations


StoreDep = Annotated[Store, Depends(_store)]
SettingsDep = Annotated[Settings, Depends(_settings)]
PredictorsDep = Annotated[LRUCache[Predictor], Depends(_predictors)]
EvaluationsDep = Annotated[LRUCache[Evaluation], Depends(_evaluations)]
