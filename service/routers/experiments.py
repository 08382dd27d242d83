"""/experiments: submit, validate, list, inspect, compare, rerun; metrics, curves, evaluation, checkpoints and
the model as code."""

from __future__ import annotations

import shutil
import threading
from collections.abc import Sequence
from typing import Annotated

import torch
from fastapi import APIRouter, Path, Query, Response
from pydantic import BaseModel

from service.cache import LRUCache
from service.catalogue import check_spec, class_count, dataset_for, open_dataset
from service.compare import Comparison, compare
from service.deps import (
    EvaluationsDep,
    GradientLock,
    IdempotencyKey,
    PredictorsDep,
    SettingsDep,
    StoreDep,
    idempotency,
    mark_replayed,
    replayed,
)
from service.diagnosis import diagnose
from service.errors import ERROR_RESPONSES, Conflict, InvalidInput
from service.figures import (
    PNG_RESPONSE,
    png_response,
    render_curves,
    render_feature_weights,
    render_gallery,
    render_gradients,
    render_image_rows,
    render_predicted_vs_actual,
    render_weights,
)
from service.predictions import load_predictor
from service.schemas import (
    AttemptPublic,
    Confusion,
    DeadUnitsPublic,
    ExperimentList,
    ExperimentPublic,
    ExperimentUpdate,
    Finding,
    Gradients,
    LayerGradientPublic,
    ListOrder,
    Status,
    Tag,
)
from service.settings import Settings
from service.specs import MAX_ID, PRINTABLE, EpochMetrics, ExperimentSpec, ModelKind
from service.store import Store
from worker.datasets import Dataset, DatasetUnavailable, UnknownDataset
from worker.evaluation import Evaluation
from worker.export import model_code, model_script
from worker.inference import Predictor, RowOutOfRange
from worker.model_views import NonFiniteGradient, NoPixelWeights, first_layer, gradient_examples, layer_gradients
from worker.models import MemoryEstimate, describe_model, meta_model, resolve_layers
from worker.previews import augmentation_samples

router = APIRouter(prefix="/experiments", tags=["experiments"], responses=ERROR_RESPONSES)

ExperimentId = Annotated[int, Path(ge=1, le=MAX_ID)]
Epoch = Annotated[int, Query(ge=1, le=1000, description="an epoch whose checkpoint was kept; default: the best")]


class LayerShape(BaseModel):
    index: int
    kind: str
    output_shape: list[int]  # one example's, without the batch dimension
    parameters: int


class Validation(BaseModel):
    spec: ExperimentSpec
    warnings: list[str]
    input_shape: list[int]
    layers: list[LayerShape]
    parameters: int
    trainable_parameters: int
    estimated_memory_bytes: int  # the sum of `memory`'s parts
    memory: MemoryEstimate
    # The model as PyTorch code, layer for layer: `build_model()` of GET /experiments/{id}/model.py.
    model_code: str


@router.post("", status_code=201, response_model=ExperimentPublic, responses=replayed(ExperimentPublic))
def submit_experiment(
    spec: ExperimentSpec, store: StoreDep, settings: SettingsDep, response: Response, key: IdempotencyKey = None
):
    """Queue an experiment. With an `Idempotency-Key` header, a retry of the same request returns the experiment
    the first one created (200) instead of queueing another; the same key with a different body is a 422."""
    warnings = check_spec(spec, settings, store)
    experiment, created = store.create_experiment(spec, warnings=warnings, idempotency=idempotency(key, spec))
    mark_replayed(response, created)
    response.headers["Location"] = f"/experiments/{experiment.id}"
    return experiment


@router.post(":validate", response_model=Validation)
def validate_experiment(spec: ExperimentSpec, settings: SettingsDep, store: StoreDep):
    """Dry run, nothing queued: the spec with every default filled in (and a layer list's inferred sizes written
    in), each layer's output shape and parameters, an estimate of the training memory, the model as PyTorch code,
    and the warnings it would get. The same checks as POST /experiments: a layer that cannot take its input is a
    422 naming the layer's index and shapes."""
    warnings = check_spec(spec, settings, store)
    info = dataset_for(spec, settings, store)
    shape = info.preprocess.input_shape
    model = meta_model(spec.model, shape, info.num_classes)
    report = describe_model(spec, model, info)
    if spec.model.kind == "sequential":
        spec = spec.model_copy(update={"model": resolve_layers(spec.model, shape, info.num_classes)})
    return Validation(
        spec=spec,
        warnings=warnings,
        input_shape=list(info.preprocess.input_shape),
        layers=[
            LayerShape(index=r.index, kind=r.kind, output_shape=list(r.output_shape), parameters=r.parameters)
            for r in report.layers
        ],  # fmt: skip
        parameters=report.parameters,
        trainable_parameters=report.trainable_parameters,
        estimated_memory_bytes=report.memory.total,
        memory=report.memory,
        model_code=model_code(model, spec.model.kind),
    )


@router.post(":validate/augmentations.png", response_class=Response, responses=PNG_RESPONSE)
def preview_augmentations(spec: ExperimentSpec, settings: SettingsDep, store: StoreDep):
    """Real training images of the spec's dataset after its augmentations, before submitting it."""
    dataset_for(spec, settings, store)
    return png_response(_augmentation_grid(spec, settings, store, "preview"))


@router.get("", response_model=ExperimentList)
def list_experiments(
    store: StoreDep,
    status: Status | None = None,
    dataset: Annotated[
        str | None, Query(max_length=64, pattern=PRINTABLE, description="the spec's dataset.name")
    ] = None,
    model: Annotated[ModelKind | None, Query(description="the spec's model.kind")] = None,
    name: Annotated[
        str | None, Query(max_length=200, pattern=PRINTABLE, description="part of the name, any case")
    ] = None,
    sweep: Annotated[int | None, Query(ge=1, le=MAX_ID, description="a sweep's trials")] = None,
    tag: Annotated[
        list[Tag] | None, Query(max_length=20, description="tagged so; repeat it for runs with every tag")
    ] = None,
    sort: Annotated[
        ListOrder,
        Query(
            description="newest or oldest first, or by the best epoch's val_accuracy (highest first) or "
            "val_loss (lowest first), those without one last"
        ),
    ] = "newest",
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    offset: Annotated[int, Query(ge=0, le=2**31 - 1)] = 0,
):
    """Newest first unless `sort` says otherwise; `total` counts every match. The filters combine."""
    items, total = store.list_experiments(
        status=status,
        dataset=dataset,
        model=model,
        name=name,
        sweep_id=sweep,
        tags=tag or (),
        sort=sort,
        limit=limit,
        offset=offset,
    )
    return ExperimentList(items=items, total=total, limit=limit, offset=offset)


# Declared before /{experiment_id}, which would otherwise take "compare" for an id.
@router.get("/compare", response_model=Comparison)
def compare_experiments(
    store: StoreDep,
    ids: Annotated[str, Query(description="comma-separated experiment ids, e.g. 3,4", max_length=400)],
):
    """Where the specs differ, and the metrics of each epoch side by side."""
    wanted = parse_ids(ids, minimum=2)
    experiments = [store.get_experiment(i) for i in wanted]
    return compare(experiments, [store.list_metrics(i) for i in wanted])


def parse_ids(ids: str, *, minimum: int) -> list[int]:
    """A comma-separated list of experiment ids from the query string, or a 422."""
    try:
        wanted = [int(part) for part in ids.split(",") if part.strip()]
    except ValueError:
        raise InvalidInput("ids must be comma-separated integers, e.g. ids=3,4", loc=["query", "ids"]) from None
    if not minimum <= len(wanted) <= 20 or not all(1 <= i <= MAX_ID for i in wanted):
        raise InvalidInput(f"give between {minimum} and 20 experiment ids", loc=["query", "ids"])
    return wanted


@router.get("/{experiment_id}", response_model=ExperimentPublic)
def get_experiment(experiment_id: ExperimentId, store: StoreDep):
    return store.get_experiment(experiment_id)


@router.patch("/{experiment_id}", response_model=ExperimentPublic)
def update_experiment(experiment_id: ExperimentId, update: ExperimentUpdate, store: StoreDep):
    """Rename an experiment, write notes on it, or set its tags (the list given replaces the old one), at any
    time, even while it trains: nothing its training reads changes. A field left out is kept."""
    return store.update_experiment(experiment_id, update)


@router.post("/{experiment_id}/rerun", status_code=201, response_model=ExperimentPublic)
def rerun_experiment(experiment_id: ExperimentId, store: StoreDep, settings: SettingsDep, response: Response):
    """Queue the identical spec again (same seed): on the same device kind it reproduces the same metrics."""
    spec = store.get_experiment(experiment_id).spec
    experiment, _ = store.create_experiment(spec, warnings=check_spec(spec, settings, store), rerun_of=experiment_id)
    response.headers["Location"] = f"/experiments/{experiment.id}"
    return experiment


@router.post("/{experiment_id}/cancel", response_model=ExperimentPublic)
def cancel_experiment(experiment_id: ExperimentId, store: StoreDep):
    """A queued experiment is cancelled at once; a running one stops at its next batch boundary (within about a
    second), records nothing more and keeps its checkpoints for /predict. 409 once it has finished."""
    return store.cancel(experiment_id)


@router.delete("/{experiment_id}", status_code=204, response_class=Response)
def delete_experiment(experiment_id: ExperimentId, store: StoreDep, settings: SettingsDep):
    """A finished experiment and all that was recorded of it: metrics, checkpoints, events, logs, the claim
    history, and its TensorBoard files where this API shares TRAINLAB_RUNS_DIR with the workers. Its id is never
    given to another experiment. 409 while it is queued or running (cancel it first), or while a queued or
    running experiment is to start from its weights."""
    store.delete_experiment(experiment_id)
    remove_run_files(settings, [experiment_id])


def remove_run_files(settings: Settings, experiment_ids: list[int]) -> None:
    """The TensorBoard folders of deleted experiments, where workers on this machine wrote them."""
    for experiment_id in experiment_ids:
        shutil.rmtree(settings.run_dir(experiment_id), ignore_errors=True)


class CheckpointPublic(BaseModel):
    epoch: int
    sha256: str


@router.get("/{experiment_id}/checkpoints", response_model=list[CheckpointPublic])
def list_checkpoints(experiment_id: ExperimentId, store: StoreDep):
    """The kept checkpoints (spec.checkpoints says which), newest first; any of them answers ?epoch=N."""
    store.get_experiment(experiment_id)
    return [CheckpointPublic(epoch=ref.epoch, sha256=ref.sha256) for ref in store.list_checkpoints(experiment_id)]


@router.get(
    "/{experiment_id}/checkpoint.pt",
    response_class=Response,
    responses={
        200: {
            "content": {"application/octet-stream": {}},
            "description": "the checkpoint file",
            "headers": {
                "ETag": {"description": "its SHA-256", "schema": {"type": "string"}},
                "X-Trainlab-Epoch": {"description": "the epoch it was written after", "schema": {"type": "integer"}},
            },
        }
    },
)
def download_checkpoint(experiment_id: ExperimentId, store: StoreDep, epoch: Epoch | None = None):
    """The best epoch's checkpoint (or that of `epoch`) as stored, checked against its SHA-256 (the ETag): the
    model's state_dict, the optimizer's, the spec, the preprocessing and the class names. It loads with
    `torch.load(f, weights_only=True)`; `worker.inference.Predictor(data)` rebuilds the model from it."""
    ref = store.find_checkpoint(experiment_id, epoch)
    return Response(
        store.checkpoint_data(ref),
        media_type="application/octet-stream",
        headers={
            "Content-Disposition": f'attachment; filename="experiment-{experiment_id}-epoch-{ref.epoch}.pt"',
            "ETag": f'"{ref.sha256}"',
            "X-Trainlab-Epoch": str(ref.epoch),
        },
    )


@router.get(
    "/{experiment_id}/model.py",
    response_class=Response,
    responses={200: {"content": {"text/x-python": {}}, "description": "a Python script"}},
)
def download_model_script(
    experiment_id: ExperimentId, store: StoreDep, predictors: PredictorsDep, epoch: Epoch | None = None
):
    """The checkpoint's model as plain PyTorch: a script that builds the same network, module for module (so
    that the checkpoint's state_dict loads into it), and predicts with the checkpoint file:
    `python experiment-ID-model.py experiment-ID-epoch-N.pt image.png`. It needs torch, not trainlab."""
    predictor = load_predictor(store.find_checkpoint(experiment_id, epoch), store, predictors)
    experiment = store.get_experiment(experiment_id)
    title = f"Experiment {experiment_id} ({experiment.name}), checkpoint of epoch {predictor.epoch}"
    script = model_script(predictor.model, predictor.spec, title)
    return Response(
        script,
        media_type="text/x-python; charset=utf-8",
        headers={
            "Content-Disposition": f'attachment; filename="experiment-{experiment_id}-model.py"',
            "X-Trainlab-Epoch": str(predictor.epoch),
        },
    )


@router.get("/{experiment_id}/attempts", response_model=list[AttemptPublic])
def list_attempts(experiment_id: ExperimentId, store: StoreDep):
    """Each claim by a worker, oldest first: who ran it, when, and how that attempt ended."""
    return store.list_attempts(experiment_id)


@router.get("/{experiment_id}/metrics", response_model=list[EpochMetrics])
def get_metrics(experiment_id: ExperimentId, store: StoreDep, since_epoch: Annotated[int, Query(ge=0, le=1000)] = 0):
    """One row per finished epoch; `since_epoch=N` returns only epochs after N (for polling)."""
    return store.list_metrics(experiment_id, since_epoch=since_epoch)


@router.get("/{experiment_id}/diagnosis", response_model=list[Finding])
def get_diagnosis(experiment_id: ExperimentId, store: StoreDep):
    """What the curves so far show, most fundamental first (`overshooting`: a classifier's training loss past four
    times that of guessing evenly, steps too large; `overfitting`; `not_learning`), each with what to try; [] where
    nothing stands out."""
    spec = store.get_experiment(experiment_id).spec
    return diagnose(store.list_metrics(experiment_id), classes=class_count(spec, store), loss_kind=spec.loss.kind)


@router.get("/{experiment_id}/curves.png", response_class=Response, responses=PNG_RESPONSE)
def get_curves(experiment_id: ExperimentId, store: StoreDep):
    experiment = store.get_experiment(experiment_id)
    title = f"#{experiment.id} {experiment.name} ({experiment.status})"
    return png_response(render_curves(store.list_metrics(experiment_id), title, experiment.spec.task))


@router.get("/{experiment_id}/augmentations.png", response_class=Response, responses=PNG_RESPONSE)
def get_augmentations(experiment_id: ExperimentId, store: StoreDep, settings: SettingsDep):
    """Real training images after this experiment's augmentations: each row one random draw."""
    experiment = store.get_experiment(experiment_id)
    return png_response(_augmentation_grid(experiment.spec, settings, store, f"#{experiment.id}"))


def _dataset(spec: ExperimentSpec, settings: Settings, store: Store) -> Dataset:
    """The stored experiment's dataset; 409 if this server no longer has it."""
    try:
        return open_dataset(spec.dataset, settings, store)
    except (UnknownDataset, DatasetUnavailable) as exc:
        raise Conflict(f"this server cannot load the experiment's dataset: {exc}") from None


def _augmentation_grid(spec: ExperimentSpec, settings: Settings, store: Store, label: str) -> bytes:
    dataset = _dataset(spec, settings, store)
    if dataset.info.tabular:
        raise Conflict(f"{spec.dataset.name} is a table: there are no images to show")
    kinds = ", ".join(a.kind for a in spec.augment) or "no augmentation"
    return render_image_rows(augmentation_samples(spec, dataset), f"{label} {spec.dataset.name}: {kinds}")


@router.get("/{experiment_id}/confusion", response_model=Confusion)
def get_confusion(
    experiment_id: ExperimentId, store: StoreDep, settings: SettingsDep, evaluations: EvaluationsDep,
    predictors: PredictorsDep, epoch: Epoch | None = None,
):  # fmt: skip
    """The confusion matrix, each class's accuracy (recall) and precision on the validation split, for the best (or
    a kept) epoch."""
    evaluation = _evaluate(experiment_id, epoch, store, settings, evaluations, predictors)
    return Confusion(
        epoch=evaluation.epoch,
        class_names=list(evaluation.class_names),
        matrix=evaluation.confusion().tolist(),
        per_class_accuracy=evaluation.per_class_accuracy(),
        per_class_precision=evaluation.per_class_precision(),
        accuracy=evaluation.accuracy,
    )


@router.get("/{experiment_id}/misclassified.png", response_class=Response, responses=PNG_RESPONSE)
def get_misclassified(
    experiment_id: ExperimentId, store: StoreDep, settings: SettingsDep, evaluations: EvaluationsDep,
    predictors: PredictorsDep, epoch: Epoch | None = None, limit: Annotated[int, Query(ge=1, le=64)] = 24,
    true: Annotated[int | None, Query(ge=0, le=100_000, description="only images of this class (label)")] = None,
    predicted: Annotated[int | None, Query(ge=0, le=100_000, description="only those taken for this class")] = None,
):  # fmt: skip
    """The validation images the model got most confidently wrong, with true and predicted labels: all of them, or
    those of one cell (`true` and `predicted`), row (`true`) or column (`predicted`) of the confusion matrix."""
    evaluation = _evaluate(experiment_id, epoch, store, settings, evaluations, predictors)
    if evaluation.tabular:
        raise Conflict(f"experiment {experiment_id} learned from a table: there are no images to show (its "
                       "confusion matrix, GET .../confusion, counts its errors by class)")  # fmt: skip
    names = evaluation.class_names
    check_label(names, "true", true)
    check_label(names, "predicted", predicted)
    if true is not None and true == predicted:
        raise InvalidInput(f"true and predicted are the same class ({names[true]}): those images were classified "
                           "right, not mistaken", loc=["query", "predicted"])  # fmt: skip
    worst = evaluation.worst_errors(limit, true, predicted)
    captions = [f"true {names[evaluation.labels[i]]}\npred {names[evaluation.predicted[i]]}" for i in worst]
    which = ", ".join(f"{field} {names[label]}" for field, label in (("true", true), ("predicted", predicted))
                      if label is not None)  # fmt: skip
    title = f"#{experiment_id} epoch {evaluation.epoch}: most confident validation errors{', ' if which else ''}{which}"
    return png_response(render_gallery(evaluation.split.images[worst], captions, title))


def check_label(class_names: Sequence[str], field: str, label: int | None) -> None:
    """A query's class label (absent, or one of the model's), or a 422 naming the field and the labels there are."""
    if label is not None and label >= len(class_names):
        raise InvalidInput(f"{field}={label} is no class of this model: its labels are 0 to {len(class_names) - 1}",
                           loc=["query", field])  # fmt: skip


# The filters or units of a first layer drawn at most; a layer has up to 4,096.
MAX_WEIGHT_IMAGES = 64


@router.get("/{experiment_id}/weights.png", response_class=Response, responses=PNG_RESPONSE)
def get_weights(
    experiment_id: ExperimentId, store: StoreDep, predictors: PredictorsDep, epoch: Epoch | None = None
):  # fmt: skip
    """The weights of the model's first layer that sees the input itself: a conv layer's filters, or a linear
    layer's units as images (a linear model's: one a class, what pushes the image towards it), the first 64; for a
    table's model, each unit's weight on each feature (a linear regression's coefficients, largest first)."""
    predictor = load_predictor(store.find_checkpoint(experiment_id, epoch), store, predictors)
    try:
        first = first_layer(predictor)
    except NoPixelWeights as exc:
        raise Conflict(f"experiment {experiment_id} has no weights to show on its input: {exc}") from None
    weights = first.weights[:MAX_WEIGHT_IMAGES]
    shape = "x".join(map(str, first.weights.shape[1:]))
    what = ("filter" if first.filters else "unit") + ("s" if len(first.weights) > 1 else "")
    cut = f" (the first {len(weights)})" if len(weights) < len(first.weights) else ""
    title = f"#{experiment_id} epoch {predictor.epoch}: {first.name}, {len(first.weights)} {what}"
    units = list(predictor.class_names) if first.outputs else [f"{i}" for i in range(len(weights))]
    if predictor.tabular:
        features = predictor.preprocess.column_names
        return png_response(render_feature_weights(weights[:, :, 0, 0], features, units, title + cut))
    which = " (one a class)" if first.outputs else cut
    return png_response(render_weights(weights, units, f"{title} of {shape}{which}"))


@router.get("/{experiment_id}/gradients", response_model=Gradients)
def get_gradients(
    experiment_id: ExperimentId, store: StoreDep, settings: SettingsDep, predictors: PredictorsDep,
    lock: GradientLock, epoch: Epoch | None = None,
):  # fmt: skip
    """How large the training loss's gradient is at each layer with a weight (root mean square, beside the
    weight's), at the best checkpoint or epoch N, over up to 256 training examples in training mode: gradients
    that vanish show as first layers orders of magnitude below the last."""
    return _gradients(experiment_id, epoch, store, settings, predictors, lock)


@router.get("/{experiment_id}/gradients.png", response_class=Response, responses=PNG_RESPONSE)
def get_gradients_png(
    experiment_id: ExperimentId, store: StoreDep, settings: SettingsDep, predictors: PredictorsDep,
    lock: GradientLock, epoch: Epoch | None = None,
):  # fmt: skip
    """`GET .../gradients` drawn: a bar a layer, first layer at the top, on a log scale; beside it, each ReLU
    layer's dead units."""
    found = _gradients(experiment_id, epoch, store, settings, predictors, lock)
    title = (f"#{experiment_id} epoch {found.epoch}: the training loss's gradient at each layer\n"
             f"over {found.examples} training examples (loss {found.loss:.3g})")  # fmt: skip
    return png_response(render_gradients(found.layers, found.relus, title))


def _gradients(
    experiment_id: int, epoch: int | None, store: Store, settings: Settings, predictors: LRUCache[Predictor],
    lock: threading.Lock,
) -> Gradients:  # fmt: skip
    predictor = load_predictor(store.find_checkpoint(experiment_id, epoch), store, predictors)
    train = _dataset(predictor.spec, settings, store).train
    examples = gradient_examples(predictor, len(train))
    # A fixed sample across the split (its order may group classes), the same for every checkpoint.
    chosen = torch.randperm(len(train), generator=torch.Generator().manual_seed(0))[:examples]
    try:
        with lock:
            found = layer_gradients(predictor, train.images[chosen], train.labels[chosen])
    except NonFiniteGradient as exc:
        raise Conflict(f"experiment {experiment_id}'s epoch {predictor.epoch} has no finite gradient: {exc}") from None
    layers = [LayerGradientPublic(name=g.name, parameters=g.parameters, weight_rms=g.weight, gradient_rms=g.gradient)
              for g in found.layers]  # fmt: skip
    relus = [DeadUnitsPublic(name=r.name, units=r.units, dead=r.dead) for r in found.relus]
    return Gradients(epoch=predictor.epoch, examples=found.examples, loss=found.loss, layers=layers, relus=relus)


@router.get("/{experiment_id}/predicted-vs-actual.png", response_class=Response, responses=PNG_RESPONSE)
def get_predicted_vs_actual(
    experiment_id: ExperimentId, store: StoreDep, settings: SettingsDep, predictors: PredictorsDep,
    epoch: Epoch | None = None,
):  # fmt: skip
    """A regression's predictions against the true targets of the validation split (best checkpoint, or epoch N):
    the nearer the diagonal, the better; MAE and R² in the title. What a confusion matrix is to a classifier."""
    spec = store.get_experiment(experiment_id).spec
    if spec.task != "regression":
        raise Conflict(f"experiment {experiment_id} is a classifier: GET .../confusion shows its errors")
    predictor = load_predictor(store.find_checkpoint(experiment_id, epoch), store, predictors)
    val = _dataset(spec, settings, store).val
    try:
        predicted = torch.tensor(predictor.predict_rows(val.images))
    except RowOutOfRange as exc:
        raise Conflict(f"validation {exc}") from None
    title = f"#{experiment_id} epoch {predictor.epoch}: validation"
    return png_response(render_predicted_vs_actual(val.labels, predicted, title, predictor.class_names[0]))


def _evaluate(
    experiment_id: int, epoch: int | None, store: Store, settings: Settings, evaluations, predictors
) -> Evaluation:
    spec = store.get_experiment(experiment_id).spec
    if spec.task != "classification":
        raise Conflict(f"experiment {experiment_id} is a {spec.task}: confusion matrices are for classifiers")
    ref = store.find_checkpoint(experiment_id, epoch)

    def build() -> Evaluation:
        val = _dataset(spec, settings, store).val
        return Evaluation.of(load_predictor(ref, store, predictors), val)

    return evaluations.get(ref, build)
