"""/experiments/{id}/predict: what the trained models say about new images and table rows, and figures of how
they came to say it about an image (what each layer makes of it, which pixels sway it).

Its own router, included first: /predict is the API's hot path, and routes are matched in order."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Annotated

import torch
from fastapi import APIRouter, Query, Request, Response
from fastapi.concurrency import run_in_threadpool
from PIL import Image
from pydantic import BaseModel, ConfigDict, Field
from starlette.datastructures import UploadFile

from service.deps import PredictionsDep, PredictorsDep, SettingsDep, StoreDep
from service.errors import ERROR_RESPONSES, Conflict, InvalidInput, PayloadTooLarge, UnsupportedMediaType
from service.figures import PNG_RESPONSE, png_response, render_layer_outputs, render_saliency
from service.images import ACCEPTED_IN_WORDS, decode_image
from service.predictions import image_predictor, load_predictor, probabilities
from service.routers.experiments import Epoch, ExperimentId, check_label
from service.schemas import Prediction, RowPredictions
from worker.inference import Predictor, RowOutOfRange
from worker.model_views import layer_outputs, saliency

if TYPE_CHECKING:
    from service.cache import LRUCache
    from service.settings import Settings
    from service.store import Store

router = APIRouter(prefix="/experiments", tags=["experiments"], responses=ERROR_RESPONSES)


# The image itself as the body (`curl --data-binary @digit.png -H "Content-Type: image/png"`, as TorchServe takes
# it), or a multipart form's `file` field (what a browser form sends). The body spares both sides the multipart
# encoding: 0.3-0.5 ms of a request at one client here (bench/predict_latency.py).
RAW_IMAGE_TYPES = ("image/png", "image/jpeg", "image/webp", "application/octet-stream")
_BINARY = {"type": "string", "format": "binary"}
PREDICT_BODY = {
    "required": True,
    "content": {
        "multipart/form-data": {
            "schema": {
                "type": "object",
                "required": ["file"],
                "properties": {"file": {**_BINARY, "description": ACCEPTED_IN_WORDS}},
            }
        },
        **{media_type: {"schema": _BINARY} for media_type in RAW_IMAGE_TYPES},
    },
}


async def uploaded_image(request: Request, limit: int) -> bytes:
    """The bytes of the uploaded image, from the body itself or from a multipart form's `file` field."""
    media_type = request.headers.get("content-type", "").partition(";")[0].strip().lower()
    if media_type in RAW_IMAGE_TYPES:
        data = await request.body()  # BodySizeLimit stops the read a little past `limit`
    elif media_type == "multipart/form-data":
        async with request.form() as form:
            file = form.get("file")
            if not isinstance(file, UploadFile):
                raise InvalidInput("the form has no file named 'file'", loc=["body", "file"])
            data = await file.read(limit + 1)  # one byte past the limit is enough to refuse it below
    else:
        raise UnsupportedMediaType(
            f"send the image as the body (Content-Type {', '.join(RAW_IMAGE_TYPES)}) or as the field 'file' of a "
            f"multipart/form-data upload, not {media_type or 'a body without a Content-Type'}"
        )
    if len(data) > limit:
        raise PayloadTooLarge(f"the image is over {limit:,} bytes (TRAINLAB_MAX_UPLOAD_BYTES)")
    return data


@router.post("/{experiment_id}/predict", response_model=Prediction, openapi_extra={"requestBody": PREDICT_BODY})
async def predict(
    experiment_id: ExperimentId,
    predictions: PredictionsDep,
    request: Request,
    epoch: Epoch | None = None,
    top_k: Annotated[int, Query(ge=1, le=1000)] = 5,
) -> Response:
    """Classify one PNG, JPEG or WebP image with the best checkpoint (or that of `epoch`): the image as the body, or
    the field `file` of a multipart form. Concurrent requests are answered in batches, off the event loop
    (service/predictions.py)."""
    # One dependency (the service object) rather than four: solving them was a third of the event loop's work
    # per request (cProfile of the ASGI app).
    with predictions.latency.time():
        data = await uploaded_image(request, predictions.max_upload_bytes)
        prediction = await predictions.predict(experiment_id, epoch, data, top_k)
        # Serialised here rather than re-validated against response_model: this is the API's hot path.
        return Response(prediction.model_dump_json(), media_type="application/json")


# Figures of one uploaded image, sent as to /predict. They draw for a second or so, on a thread of their own.
IMAGE_FIGURE = {"response_class": Response, "responses": PNG_RESPONSE, "openapi_extra": {"requestBody": PREDICT_BODY}}
Figure = Callable[[Predictor, Image.Image], bytes]


async def _image_figure(
    request: Request,
    experiment_id: int,
    epoch: int | None,
    store: Store,
    predictors: LRUCache[Predictor],
    settings: Settings,
    figure: Figure,
) -> Response:
    data = await uploaded_image(request, settings.max_upload_bytes)

    def draw() -> bytes:  # the model first: an unknown id or a table's model is answered before any decoding
        predictor = image_predictor(experiment_id, epoch, store, predictors)
        return figure(predictor, decode_image(data, max_pixels=settings.max_image_pixels))

    return png_response(await run_in_threadpool(draw))


@router.post("/{experiment_id}/activations.png", **IMAGE_FIGURE)
async def draw_activations(
    request: Request, experiment_id: ExperimentId, store: StoreDep, predictors: PredictorsDep, settings: SettingsDep,
    epoch: Epoch | None = None,
) -> Response:  # fmt: skip
    """What each layer of the model makes of one image (sent as to .../predict): a row per layer, with a few
    channels' maps or a bar per value, down to the classes' scores."""

    def figure(predictor: Predictor, image: Image.Image) -> bytes:
        pixels, outputs = layer_outputs(predictor, image)
        title = f"#{experiment_id} {predictor.spec.name}, epoch {predictor.epoch}: what each layer makes of the image"
        return render_layer_outputs(pixels, outputs, predictor.class_names, title)

    return await _image_figure(request, experiment_id, epoch, store, predictors, settings, figure)


@router.post("/{experiment_id}/saliency.png", **IMAGE_FIGURE)
async def draw_saliency(
    request: Request, experiment_id: ExperimentId, store: StoreDep, predictors: PredictorsDep, settings: SettingsDep,
    epoch: Epoch | None = None,
    label: Annotated[int | None, Query(ge=0, le=100_000, description="the class (default: the predicted one)")] = None,
) -> Response:  # fmt: skip
    """Which pixels of one image (sent as to .../predict) sway the model's score of a class most: the image, the
    magnitude of the score's gradient at each pixel, and the two laid over each other."""

    def figure(predictor: Predictor, image: Image.Image) -> bytes:
        names = predictor.class_names
        check_label(names, "label", label)
        found = saliency(predictor, image, label)
        title = (f"#{experiment_id} {predictor.spec.name}, epoch {predictor.epoch}: what sways its score of "
                 f"{names[found.label]!r} (p = {found.probability:.3f})")  # fmt: skip
        return render_saliency(found.pixels, found.map, title)

    return await _image_figure(request, experiment_id, epoch, store, predictors, settings, figure)


class Rows(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    rows: Annotated[
        list[Annotated[list[float], Field(min_length=1, max_length=10_000)]], Field(min_length=1, max_length=10_000)
    ]


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
    rows = torch.tensor(body.rows)
    try:
        out = predictor.predict_rows(rows, top_k=top_k)
    except RowOutOfRange as exc:
        raise InvalidInput(str(exc), loc=["body", "rows", exc.row]) from None
    outside = predictor.preprocess.outside_training_range(rows)
    if predictor.spec.task == "regression":
        return RowPredictions(epoch=predictor.epoch, values=out, outside_training_range=outside)
    classes = [probabilities(row) for row in out]
    return RowPredictions(epoch=predictor.epoch, classes=classes, outside_training_range=outside)
