"""Watching experiments: the live event stream (SSE), the run's log, metrics as CSV, overlaid curves."""

from __future__ import annotations

import asyncio
import csv
import io
import json
import zipfile
from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import APIRouter, Header, Query, Request, Response
from fastapi.responses import StreamingResponse
from pydantic import BaseModel
from starlette.concurrency import run_in_threadpool

from service.compare import Metric, chart_metric, compare
from service.deps import SettingsDep, StoreDep
from service.errors import ERROR_RESPONSES, NotFound
from service.figures import PNG_RESPONSE, png_response, render_comparison
from service.routers.experiments import ExperimentId, parse_ids
from service.schemas import ExperimentPublic, Status
from service.settings import Settings
from service.specs import MAX_ID, EpochMetrics
from service.store import DatabaseUnavailable, Store

router = APIRouter(prefix="/experiments", tags=["watch"], responses=ERROR_RESPONSES)

FINISHED = {Status.succeeded.value, Status.failed.value, Status.cancelled.value}
# An SSE comment this often keeps proxies and clients from timing out an idle stream.
KEEPALIVE_S = 15.0
# A worker not seen for this long is taken for gone when explaining why a job waits.
WORKER_SILENCE_S = 30.0

SSE_RESPONSE = {
    200: {
        "content": {"text/event-stream": {}},
        "description": "Server-Sent Events: `status`, `epoch`, `progress`, `log` (each with an `id`) and `queue` "
        "(queued experiments: position and what they wait for)",
    }
}


def _sse(kind: str, data: dict, event_id: int | None = None) -> str:
    head = f"id: {event_id}\n" if event_id is not None else ""
    return f"{head}event: {kind}\ndata: {json.dumps(data, default=str)}\n\n"


def waiting_for(experiment: ExperimentPublic, store: Store) -> dict:
    """A queued experiment's place in the queue and what it waits for, in words."""
    position = store.queue_position(experiment.id)
    workers = store.live_workers(WORKER_SILENCE_S)
    if experiment.spec.device == "cuda" and not any(w.device.startswith("cuda") for w in workers):
        reason = "a worker with a GPU: no running worker has CUDA (the spec asks for device 'cuda')"
    elif not workers:
        reason = "a worker: none is running (start one with `python -m worker`)"
    elif busy := [w for w in workers if w.experiment_id is not None]:
        reason = f"a free worker: {len(busy)} of {len(workers)} are training"
        if position > 1:
            reason += f", {position - 1} queued ahead"
    else:
        reason = "the next poll of an idle worker"
    return {"position": position, "workers": len(workers), "waiting_for": reason}


@router.get("/{experiment_id}/events", response_class=StreamingResponse, responses=SSE_RESPONSE)
async def stream_events(
    experiment_id: ExperimentId,
    request: Request,
    store: StoreDep,
    settings: SettingsDep,
    last_event_id: Annotated[int | None, Header(alias="Last-Event-ID", ge=0, le=MAX_ID)] = None,
    after: Annotated[int | None, Query(ge=0, le=MAX_ID, description="as Last-Event-ID, without headers")] = None,
):
    """The experiment's history, then its events as they happen, until it finishes: `status` (with error or stop
    reason), `epoch` (the metrics row), `progress` (about once a second inside an epoch: batches done, running
    loss, samples/s, seconds left of the epoch and of the run), `log` (the worker's lines). Reconnecting with
    `Last-Event-ID` replays only what was missed. While queued: `queue` events (position, why it waits)."""
    await run_in_threadpool(store.get_experiment, experiment_id)  # 404 before the stream starts
    start = last_event_id if last_event_id is not None else (after or 0)
    return StreamingResponse(
        _events(experiment_id, start, request, store, settings),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"},
    )


async def _events(
    experiment_id: int, last: int, request: Request, store: Store, settings: Settings
) -> AsyncIterator[str]:
    queue_said: dict | None = None
    clock = asyncio.get_running_loop().time
    quiet_since = clock()
    while not await request.is_disconnected():
        try:
            # The experiment before its events: once it has finished, the events read next include how it ended.
            experiment = await run_in_threadpool(store.get_experiment, experiment_id)
            events = await run_in_threadpool(store.events, experiment_id, after=last)
            queued = experiment.status is Status.queued and not events
            said = await run_in_threadpool(waiting_for, experiment, store) if queued else None
        except DatabaseUnavailable:  # e.g. its server restarting: the stream stays open, and reads again
            events, said = [], None
        except NotFound:  # deleted meanwhile (only a finished experiment can be): nothing more will happen to it
            return
        else:
            finished = False
            for event in events:
                yield _sse(event.kind, event.data, event.id)
                last = event.id
                finished = event.kind == "status" and event.data["status"] in FINISHED
            if finished or (not events and experiment.status.value in FINISHED):
                return
        if events:
            quiet_since = clock()
        if said is not None:
            if said != queue_said:
                yield _sse("queue", said)
                queue_said = said
        elif clock() - quiet_since > KEEPALIVE_S:
            yield ": keep-alive\n\n"
            quiet_since = clock()
        await asyncio.sleep(settings.events_poll_s)


class LogLine(BaseModel):
    id: int
    time: str
    level: str
    message: str


@router.get("/{experiment_id}/logs", response_model=list[LogLine])
def get_logs(experiment_id: ExperimentId, store: StoreDep, after: Annotated[int, Query(ge=0, le=MAX_ID)] = 0):
    """The worker's log lines about this experiment (claims, epochs, resumes, errors with tracebacks), oldest
    first; `after=ID` returns only newer lines."""
    return [
        LogLine(id=e.id, time=e.created_at.isoformat(), level=e.data["level"], message=e.data["message"])
        for e in store.events(experiment_id, after=after, kinds=["log"], limit=10_000)
    ]


@router.get(
    "/{experiment_id}/metrics.csv",
    response_class=Response,
    responses={200: {"content": {"text/csv": {}}, "description": "one row per epoch, a header first"}},
)
def get_metrics_csv(experiment_id: ExperimentId, store: StoreDep):
    """The metrics rows as CSV (for a spreadsheet or pandas); the task's other metrics are empty. A column a value:
    the loss curve within each epoch is in the JSON rows."""
    columns = [name for name in EpochMetrics.model_fields if name != "train_loss_curve"]
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    for row in store.list_metrics(experiment_id):
        writer.writerow(row.model_dump(include=set(columns)))
    return Response(
        buffer.getvalue(),
        media_type="text/csv",
        headers={"Content-Disposition": f'attachment; filename="experiment-{experiment_id}-metrics.csv"'},
    )


# Before /{experiment_id}/..., which would otherwise take "compare.png" for an id.
@router.get("/compare.png", response_class=Response, responses=PNG_RESPONSE)
def compare_png(
    store: StoreDep,
    ids: Annotated[str, Query(description="comma-separated experiment ids, e.g. 3,4", max_length=400)],
    metric: Metric | None = None,
):
    """One curve per experiment: `metric` per epoch; by default the metric their best epochs are chosen by
    (val_accuracy for classifiers, val_loss for regressions). A metric their task does not record: 422."""
    wanted = parse_ids(ids, minimum=1)
    experiments = [store.get_experiment(i) for i in wanted]
    metric = chart_metric({e.spec.task for e in experiments}, metric)
    metrics = [store.list_metrics(i) for i in wanted]
    # Labelled by what sets each apart (their names often differ in a suffix the legend cuts off).
    labels = compare(experiments, metrics).labels
    series = [(f"#{e.id} {label or e.name}", rows) for e, label, rows in zip(experiments, labels, metrics, strict=True)]
    return png_response(render_comparison(series, metric, f"{metric}: experiments {', '.join(map(str, wanted))}"))


@router.get(
    "/{experiment_id}/tensorboard.zip",
    response_class=Response,
    responses={200: {"content": {"application/zip": {}}, "description": "the run's TensorBoard event files"}},
)
def get_tensorboard(experiment_id: ExperimentId, store: StoreDep, settings: SettingsDep):
    """The TensorBoard event files the worker wrote for this experiment: unzip and `tensorboard --logdir .`."""
    store.get_experiment(experiment_id)
    folder = settings.run_dir(experiment_id)
    files = sorted(p for p in folder.rglob("*") if p.is_file()) if folder.is_dir() else []
    if not files:
        raise NotFound(
            f"no TensorBoard files for experiment {experiment_id} in {folder} (TRAINLAB_RUNS_DIR): its worker writes "
            "them where TRAINLAB_TENSORBOARD is on, on its own machine"
        )
    buffer = io.BytesIO()
    try:
        with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
            for path in files:
                archive.write(path, f"{experiment_id}/{path.relative_to(folder).as_posix()}")
    except FileNotFoundError:  # the experiment was deleted meanwhile
        raise NotFound(f"experiment {experiment_id} not found") from None
    return Response(
        buffer.getvalue(),
        media_type="application/zip",
        headers={"Content-Disposition": f'attachment; filename="experiment-{experiment_id}-tensorboard.zip"'},
    )
