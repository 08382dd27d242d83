"""/experiments/{id}/predict: what the trained models say about new images and table rows.

Its own router, included first: /predict is the API's hot path, and routes are matched in order."""

from __future__ import annotations

from typing import Annotated

import torch
from fastapi import APIRouter, File, Query, Response, UploadFile
from pydantic import BaseModel, ConfigDict, Field

from service.deps import PredictionsDep, PredictorsDep, StoreDep
from service.errors import ERROR_RESPONSES, Conflict, InvalidInput, PayloadTooLarge
from service.predictions import load_predictor, probabilities
from service.routers.experiments import Epoch, ExperimentId
from service.schemas import ClassProbability, Prediction

router = APIRouter(prefix="/experiments", tags=["experiments"], responses=ERROR_RESPONSES)


@router.post("/{experiment_id}/predict", response_model=Prediction)
async def predict(
    experiment_id: ExperimentId,
    predictions: PredictionsDep,
    file: Annotated[UploadFile, File(description="a PNG or JPEG image")],
    epoch: Epoch | None = None,
    top_k: Annotated[int, Query(ge=1, le=1000)] = 5,
) -> Response:
    """Classify one image with the best checkpoint (or that of `epoch`). Concurrent requests are answered in
    batches, off the event loop (service/predictions.py)."""
    # One dependency (the service object) rather than four: solving them was a third of the event loop's work
    # per request (cProfile of the ASGI app).
    with predictions.latency.time():
        limit = predictions.max_upload_bytes
        if file.size is not None and file.size > limit:
            raise PayloadTooLarge(f"upload is {file.size} bytes; the limit is {limit}")
        prediction = await predictions.predict(experiment_id, epoch, await file.read(limit + 1), top_k)
        # Serialised here rather than re-validated against response_model: this is the API's hot path.
        return Response(prediction.model_dump_json(), media_type="application/json")


class Rows(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    rows: Annotated[
        list[Annotated[list[float], Field(min_length=1, max_length=10_000)]], Field(min_length=1, max_length=10_000)
    ]


class RowPredictions(BaseModel):
    epoch: int
    # Regression: the predicted target of each row, in its own units.
    values: list[float] | None = None
    # Classification: each row's classes, most probable first.
    classes: list[list[ClassProbability]] | None = None


@router.post("/{experiment_id}/predict/rows", response_model=RowPredictions)
def predict_rows(
    experiment_id: ExperimentId,
    body: Rows,
    store: StoreDep,
    predictors: PredictorsDep,
    epoch: Epoch | None = None,
    top_k: Annotated[int, Query(ge=1, le=1000)] = 1,
):
    """For a model trained on a table (a CSV upload, `diabetes`): predict each row of features, given in the
    dataset's column order without the target."""
    predictor = load_predictor(store.find_checkpoint(experiment_id, epoch), store, predictors)
    if not predictor.tabular:
        raise Conflict(f"experiment {experiment_id} learned from images: POST an image to .../predict")
    width = predictor.preprocess.channels
    for i, row in enumerate(body.rows):
        if len(row) != width:
            raise InvalidInput(f"row {i} has {len(row)} values; the model takes {width}", loc=["body", "rows", i])
    out = predictor.predict_rows(torch.tensor(body.rows), top_k=top_k)
    if predictor.spec.task == "regression":
        return RowPredictions(epoch=predictor.epoch, values=out)
    return RowPredictions(epoch=predictor.epoch, classes=[probabilities(row) for row in out])
