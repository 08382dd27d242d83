"""/experiments: submit, list, inspect, metrics, curves and predictions."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, File, Path, Query, Request, Response, UploadFile

from service.curves import render_curves
from service.deps import PredictorsDep, SettingsDep, StoreDep
from service.errors import InvalidInput, PayloadTooLarge
from service.images import decode_image
from service.schemas import ClassProbability, ExperimentList, ExperimentPublic, Prediction, Status
from service.specs import EpochMetrics, ExperimentSpec
from worker.datasets import UnknownDataset, dataset_info

router = APIRouter(prefix="/experiments", tags=["experiments"])

# Ids are 32-bit on every backend; a larger number can only be a miss, so refuse it as input.
ExperimentId = Annotated[int, Path(ge=1, le=2**31 - 1)]
Epoch = Annotated[int, Query(ge=1, le=1000)]


@router.post("", status_code=201, response_model=ExperimentPublic)
def submit_experiment(spec: ExperimentSpec, store: StoreDep, request: Request, response: Response):
    try:
        dataset_info(spec.dataset.name)
    except UnknownDataset as exc:
        raise InvalidInput(str(exc), loc=["body", "dataset", "name"]) from None
    experiment = store.create_experiment(spec)
    response.headers["Location"] = request.app.url_path_for("get_experiment", experiment_id=str(experiment.id))
    return experiment


@router.get("", response_model=ExperimentList)
def list_experiments(
    store: StoreDep,
    status: Status | None = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    offset: Annotated[int, Query(ge=0, le=2**31 - 1)] = 0,
):
    items, total = store.list_experiments(status=status, limit=limit, offset=offset)
    return ExperimentList(items=items, total=total, limit=limit, offset=offset)


@router.get("/{experiment_id}", response_model=ExperimentPublic)
def get_experiment(experiment_id: ExperimentId, store: StoreDep):
    return store.get_experiment(experiment_id)


@router.get("/{experiment_id}/metrics", response_model=list[EpochMetrics])
def get_metrics(
    experiment_id: ExperimentId, store: StoreDep, since_epoch: Annotated[int, Query(ge=0, le=1000)] = 0
):
    """One row per finished epoch; `since_epoch=N` returns only epochs after N (for polling)."""
    return store.list_metrics(experiment_id, since_epoch=since_epoch)


@router.get(
    "/{experiment_id}/curves.png",
    response_class=Response,
    responses={200: {"content": {"image/png": {}}, "description": "loss and accuracy, train vs validation"}},
)
def get_curves(experiment_id: ExperimentId, store: StoreDep):
    experiment = store.get_experiment(experiment_id)
    png = render_curves(store.list_metrics(experiment_id), f"#{experiment.id} {experiment.name} ({experiment.status})")
    return Response(png, media_type="image/png", headers={"Cache-Control": "no-store"})


@router.post("/{experiment_id}/predict", response_model=Prediction)
def predict(
    experiment_id: ExperimentId,
    store: StoreDep,
    settings: SettingsDep,
    predictors: PredictorsDep,
    file: Annotated[UploadFile, File(description="a PNG or JPEG image")],
    epoch: Epoch | None = None,
    top_k: Annotated[int, Query(ge=1, le=1000)] = 5,
):
    """Classify one image with the best checkpoint (or that of `epoch`)."""
    if file.size is not None and file.size > settings.max_upload_bytes:
        raise PayloadTooLarge(f"upload is {file.size} bytes; the limit is {settings.max_upload_bytes}")
    # Resolve the checkpoint first: an unknown id or an untrained model is answered before any decoding.
    ref = store.find_checkpoint(experiment_id, epoch)
    image = decode_image(file.file.read(settings.max_upload_bytes + 1), max_pixels=settings.max_image_pixels)
    predictor = predictors.get(ref, lambda: store.checkpoint_data(ref))
    scores = predictor.predict(image, top_k=top_k)
    return Prediction(
        label=scores[0].label,
        class_name=scores[0].class_name,
        probabilities=[ClassProbability(label=s.label, class_name=s.class_name, probability=s.probability) for s in scores],
        epoch=predictor.epoch,
    )
