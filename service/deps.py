"""FastAPI dependencies, as `Annotated` aliases. Everything hangs off `app.state`, set up by `create_app`."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from service.predictors import PredictorCache
from service.settings import Settings
from service.store import Store


def _store(request: Request) -> Store:
    return request.app.state.store


def _settings(request: Request) -> Settings:
    return request.app.state.settings


def _predictors(request: Request) -> PredictorCache:
    return request.app.state.predictors


StoreDep = Annotated[Store, Depends(_store)]
SettingsDep = Annotated[Settings, Depends(_settings)]
PredictorsDep = Annotated[PredictorCache, Depends(_predictors)]
