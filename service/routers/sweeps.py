"""/sweeps: many trials of one base spec, compared."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Path, Query, Response

from service.catalogue import check_spec, class_count
from service.compare import Metric, chart_metric
from service.deps import IdempotencyKey, SettingsDep, StoreDep, idempotency, mark_replayed, replayed
from service.diagnosis import diagnose
from service.errors import ERROR_RESPONSES, TrainlabError
from service.figures import PNG_RESPONSE, png_response, render_comparison
from service.routers.experiments import remove_run_files
from service.schemas import ExperimentPublic, FindingKind, SweepSummary
from service.settings import Settings
from service.specs import MAX_ID, ExperimentSpec
from service.store import Store, Trial
from service.sweeps import SweepCreate, SweepPublic, expand, sweep_public, trial_label

router = APIRouter(prefix="/sweeps", tags=["sweeps"], responses=ERROR_RESPONSES)

SweepId = Annotated[int, Path(ge=1, le=MAX_ID)]


@router.post("", status_code=201, response_model=SweepPublic, responses=replayed(SweepPublic))
def create_sweep(
    request: SweepCreate, store: StoreDep, settings: SettingsDep, response: Response, key: IdempotencyKey = None
):
    """Expand the grid / random draws into trials and queue one experiment each (all or none).
    `Idempotency-Key` works as for POST /experiments."""
    trials = [_checked(params, spec, settings, store) for params, spec in expand(request)]
    sweep_id, created = store.create_sweep(
        request.name, request.model_dump(mode="json"), trials, idempotency(key, request)
    )
    mark_replayed(response, created)
    response.headers["Location"] = f"/sweeps/{sweep_id}"
    return sweep_public(sweep_id, *store.get_sweep(sweep_id))


def _checked(params: dict[str, Any], spec: ExperimentSpec, settings: Settings, store: Store) -> Trial:
    try:
        warnings = check_spec(spec, settings, store, loc=("body", "base"))
    except TrainlabError as exc:  # name the trial: the base may be fine where one value of the grid is not
        raise type(exc)(f"trial {trial_label(params)}: {exc.detail}", loc=exc.loc) from None
    return Trial(spec=spec, params=params, warnings=warnings)


@router.get("", response_model=list[SweepSummary])
def list_sweeps(
    store: StoreDep,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    offset: Annotated[int, Query(ge=0, le=2**31 - 1)] = 0,
):
    """Newest first."""
    return store.list_sweeps(limit=limit, offset=offset)


@router.get("/{sweep_id}", response_model=SweepPublic)
def get_sweep(sweep_id: SweepId, store: StoreDep):
    """The trials, best first: by validation accuracy, or validation loss for a regression; each with what its
    curves show (`findings`: the kinds of GET /experiments/{id}/diagnosis)."""
    name, request, experiments = store.get_sweep(sweep_id)
    return sweep_public(sweep_id, name, request, experiments, _findings(experiments, store))


def _findings(experiments: list[ExperimentPublic], store: Store) -> dict[int, list[FindingKind]]:
    metrics = store.metrics_of([e.id for e in experiments])
    classes: dict[tuple[str, str], int | None] = {}  # by dataset and task, which a grid may vary
    findings = {}
    for e in experiments:
        key = (e.spec.dataset.name, e.spec.task)
        if key not in classes:
            classes[key] = class_count(e.spec, store)
        found = diagnose(metrics[e.id], classes=classes[key], loss_kind=e.spec.loss.kind)
        findings[e.id] = [finding.kind for finding in found]
    return findings


@router.delete("/{sweep_id}", status_code=204, response_class=Response)
def delete_sweep(sweep_id: SweepId, store: StoreDep, settings: SettingsDep):
    """The sweep and all its trials, each deleted as DELETE /experiments/{id} does. 409 while a trial is queued
    or running (cancel them first), or while a queued or running experiment is to start from a trial's weights."""
    remove_run_files(settings, store.delete_sweep(sweep_id))


@router.get("/{sweep_id}/compare.png", response_class=Response, responses=PNG_RESPONSE)
def compare_sweep(sweep_id: SweepId, store: StoreDep, metric: Metric | None = None):
    """Every trial's `metric` per epoch, overlaid; by default the metric the trials are ranked by."""
    name, _, experiments = store.get_sweep(sweep_id)
    metric = chart_metric({e.spec.task for e in experiments}, metric)
    series = [(trial_label(e.sweep_params or {}), store.list_metrics(e.id)) for e in experiments]
    return png_response(render_comparison(series, metric, f"sweep #{sweep_id} {name}: {metric}"))
