"""The HTTP face: `create_app(settings)` builds the FastAPI app; nothing is created at import time.

    uvicorn --factory service.app:create_app
"""

from __future__ import annotations

import logging
import threading
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import torch
from fastapi import FastAPI
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles
from sqlalchemy import text

from service.cache import LRUCache
from service.deps import StoreDep
from service.errors import install_error_handler
from service.limits import BodySizeLimit
from service.predictions import ImagePredictions
from service.routers import datasets, examples, experiments, monitoring, predictions, sweeps, watch
from service.routers.monitoring import metrics_registry
from service.settings import Settings
from service.store import DatabaseUnavailable, SchemaOutOfDate, Store
from worker.checkpoints import UnsafeEnvironment, refuse_unsafe_loading

log = logging.getLogger("trainlab.api")

STATIC_DIR = Path(__file__).resolve().parent / "static"
# Room for the multipart envelope around an upload of the maximum size.
MULTIPART_OVERHEAD = 64 * 1024


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        try:
            refuse_unsafe_loading()
        except UnsafeEnvironment as exc:
            log.error("refusing to start: %s", exc)
            raise
        # Inference shares the cores with the event loop (see Settings.inference_threads).
        torch.set_num_threads(settings.inference_threads)
        store = Store(settings.database_url)
        try:
            store.check_schema()
        except (SchemaOutOfDate, DatabaseUnavailable) as exc:
            log.error("refusing to start: %s", getattr(exc, "reason", exc))
            store.close()
            raise
        app.state.store = store
        app.state.metrics_registry, predict_latency, batch_sizes = metrics_registry(store)
        app.state.predictors = LRUCache(settings.predictor_cache_size)
        app.state.evaluations = LRUCache(settings.predictor_cache_size)
        app.state.gradient_lock = threading.Lock()
        app.state.predictions = ImagePredictions(
            store,
            app.state.predictors,
            predict_latency,
            batch_sizes,
            max_upload_bytes=settings.max_upload_bytes,
            max_pixels=settings.max_image_pixels,
        )
        yield
        app.state.predictions.close()
        store.close()

    app = FastAPI(
        title="trainlab",
        summary="Submit PyTorch experiments over HTTP; watch their curves; query the trained models.",
        version="0.1.0",
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.add_middleware(
        BodySizeLimit,
        max_bytes=settings.max_upload_bytes + MULTIPART_OVERHEAD,
        per_path={"/datasets": settings.max_dataset_bytes + MULTIPART_OVERHEAD},
    )
    install_error_handler(app)
    app.include_router(predictions.router)  # first: the hot path (routes are matched in order)
    app.include_router(watch.router)  # before experiments: its /experiments/compare.png is not an experiment id
    app.include_router(experiments.router)
    app.include_router(sweeps.router)
    app.include_router(datasets.router)
    app.include_router(examples.router)
    app.include_router(monitoring.router)

    # The dashboard: static files shipped in the package, no CDN.
    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")

    @app.get("/", include_in_schema=False)
    def dashboard() -> FileResponse:
        return FileResponse(STATIC_DIR / "index.html")

    @app.get("/healthz", tags=["health"])
    def healthz(store: StoreDep) -> dict[str, str]:
        with store.engine.connect() as conn:
            conn.execute(text("SELECT 1"))
        return {"status": "ok"}

    return app
