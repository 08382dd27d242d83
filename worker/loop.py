"""The job loop: claim a queued experiment, train it, record every epoch, mark how it ended; repeat."""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
import traceback
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TypeVar

import torch

from service.catalogue import open_dataset
from service.schemas import Status
from service.settings import Settings
from service.specs import EpochMetrics, ExperimentSpec, FromExperiment
from service.store import ClaimedJob, CorruptCheckpoint, DatabaseUnavailable, LeaseLost, Store
from worker.checkpoints import CheckpointContent, UnreadableCheckpoint, load_checkpoint
from worker.datasets import Dataset
from worker.engine import Interrupted, fit, resolve_device, runtime_environment
from worker.evaluation import Evaluation
from worker.inference import Predictor
from worker.lease import Lease
from worker.logs import ExperimentLogHandler, job_log
from worker.numerics import resolve_precision
from worker.pretrained import imagenet_state
from worker.tensorboard import RunLog

log = logging.getLogger("trainlab.worker")
VAL_METRICS = {"val_accuracy", "val_mae", "val_rmse", "val_r2"}
# How often a worker tells the database it is alive (GET /experiments/{id}/events says why a job waits).
SEEN_EVERY_S = 5.0
# While the database cannot be reached: the first wait before trying again, doubled up to the last.
RETRY_FIRST_S, RETRY_MAX_S = 0.5, 10.0
T = TypeVar("T")


@dataclass(frozen=True)
class Outcome:
    stop_reason: str | None
    test: tuple[float, float] | None  # (loss, accuracy) of the best checkpoint on the test split


def new_worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"


class InOrderRecorder:
    """Writes each epoch (metrics + checkpoint, one transaction) on a background thread while the next epoch
    trains: the write is off the critical path, still in epoch order, and a failed write (e.g. LeaseLost) is
    raised at the next epoch's end or when the block exits. Leaving the block waits for the last write."""

    def __init__(self, write: Callable[[EpochMetrics, bytes], None]) -> None:
        self.write = write
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="record")
        self._pending: Future | None = None

    def submit(self, metrics: EpochMetrics, checkpoint: bytes) -> None:
        self._wait()
        self._pending = self._executor.submit(self.write, metrics, checkpoint)

    def _wait(self) -> None:
        if self._pending is not None:
            pending, self._pending = self._pending, None
            pending.result()

    def __enter__(self) -> InOrderRecorder:
        return self

    def __exit__(self, *_exc) -> None:
        try:
            self._wait()
        finally:
            self._executor.shutdown()


def _out_of_memory(exc: BaseException) -> bool:
    # CUDA raises OutOfMemoryError; the CPU allocator a plain RuntimeError.
    return isinstance(exc, torch.OutOfMemoryError | MemoryError) or "can't allocate memory" in str(exc)


class Worker:
    def __init__(self, store: Store, settings: Settings, worker_id: str | None = None) -> None:
        self.store = store
        self.settings = settings
        self.worker_id = worker_id or new_worker_id()
        self.stopping = threading.Event()
        self._seen_at = 0.0  # when this worker last told the database it is alive

    def run(self, *, once: bool = False) -> None:
        """Serve jobs until `stopping` is set (or, with `once`, until the queue is empty). While the database
        cannot be reached, wait for it: a restart of the database server costs no job and no worker."""
        log.info("worker %s ready (polling every %.1fs)", self.worker_id, self.settings.poll_interval_s)
        handler = ExperimentLogHandler(self.store)
        log.addHandler(handler)
        device = str(resolve_device("auto"))
        try:
            while not self.stopping.is_set():
                try:
                    job = self._until_reachable(lambda: self._claim(device), "polling the queue")
                except DatabaseUnavailable:  # only once stopping
                    break
                if job is None:
                    if once:
                        return
                    self.stopping.wait(self.settings.poll_interval_s)
                    continue
                try:
                    self.store.worker_seen(self.worker_id, device, job.id)
                except DatabaseUnavailable:
                    pass  # only what GET .../events says about workers; the job's lease thread retries its own writes
                self.run_job(job)
                self._seen_at = 0.0
        finally:
            log.removeHandler(handler)
            try:
                self.store.worker_gone(self.worker_id)
            except DatabaseUnavailable as exc:
                log.warning("could not record this worker's exit: %s", exc.reason)

    def _claim(self, device: str) -> ClaimedJob | None:
        if time.monotonic() - self._seen_at >= SEEN_EVERY_S:
            self.store.worker_seen(self.worker_id, device)
            self._seen_at = time.monotonic()
        return self.store.claim(self.worker_id, lease_s=self.settings.lease_s, max_attempts=self.settings.max_attempts)

    def _until_reachable(self, call: Callable[[], T], what: str) -> T:
        """`call()`, tried again while the database cannot be reached, until it answers or the worker is stopping
        (then DatabaseUnavailable). Retrying a job's write is safe: each is fenced on the job's attempt, so if
        another worker took the job over meanwhile, the write is refused with LeaseLost."""
        wait = RETRY_FIRST_S
        while True:
            try:
                return call()
            except DatabaseUnavailable as exc:
                if self.stopping.is_set():
                    raise
                # Not job_log: its lines are stored in the very database that cannot be reached.
                log.warning("%s: the database cannot be reached (%s); trying again in %.1fs", what, exc.reason,
                            wait)  # fmt: skip
                if self.stopping.wait(wait):
                    raise
                wait = min(2 * wait, RETRY_MAX_S)

    def run_job(self, job: ClaimedJob) -> None:
        job_log(job.id).info("experiment %d attempt %d: claimed (%s)", job.id, job.attempt, job.spec.name)
        settings = self.settings
        with Lease(self.store, job, heartbeat_s=settings.heartbeat_s, lease_s=settings.lease_s) as lease:
            try:
                outcome = self._train(job, should_stop=lambda: self.stopping.is_set() or lease.lost.is_set())
            except (Interrupted, LeaseLost) as exc:
                if lease.lost.is_set() or isinstance(exc, LeaseLost):
                    job_log(job.id).warning(
                        "experiment %d: no longer ours (cancelled or taken over); dropping it", job.id
                    )
                else:  # a shutdown: fit's Interrupted carries the checkpoint to finish this epoch from
                    job_log(job.id).info(
                        "experiment %d: stopped in epoch %d at batch %d; handing it back to the queue",
                        job.id, exc.epoch, exc.progress.batches,
                    )  # fmt: skip
                    self._finish(job, Status.queued, resume_point=(exc.epoch, exc.checkpoint))
            except DatabaseUnavailable as exc:  # not the job's fault: it is trained again from its last checkpoint
                log.warning("experiment %d: the database cannot be reached (%s); handing it back to the queue",
                            job.id, exc.reason)  # fmt: skip
                self._finish(job, Status.queued)
            except Exception as exc:  # a failed job must never take the worker down with it
                job_log(job.id).error("experiment %d failed:\n%s", job.id, traceback.format_exc())
                error = f"{type(exc).__name__}: {exc}"
                if _out_of_memory(exc):
                    torch.cuda.empty_cache()
                    error = f"out of memory: {str(exc).splitlines()[0][:300]} (lower batch_size or the model's size)"
                self._finish(job, Status.failed, error)
            else:
                reason = f" ({outcome.stop_reason})" if outcome.stop_reason else ""
                job_log(job.id).info("experiment %d: succeeded%s", job.id, reason)
                self._finish(job, Status.succeeded, stop_reason=outcome.stop_reason, test=outcome.test)

    def _resume_point(self, job: ClaimedJob, device: torch.device) -> CheckpointContent | None:
        """The newest checkpoint that verifies and loads. Epochs after it are forgotten and trained again, so
        each epoch keeps exactly one metrics row."""
        resume = None
        for ref in self.store.list_checkpoints(job.id):
            try:
                resume = load_checkpoint(self.store.checkpoint_data(ref), map_location=device)
                break
            except (CorruptCheckpoint, UnreadableCheckpoint) as exc:
                job_log(job.id).warning(
                    "experiment %d: skipping the checkpoint of epoch %d: %s", job.id, ref.epoch, exc
                )
        epoch = resume.epoch if resume is not None else 0
        recorded = self.store.get_experiment(job.id).current_epoch
        if epoch < recorded:
            job_log(job.id).warning("experiment %d: training epochs %d-%d again", job.id, epoch + 1, recorded)
            self.store.rewind(job, epoch)
        if (mid_epoch := self._mid_epoch_point(job, epoch + 1, device)) is not None:
            state = mid_epoch.trainer_state["interrupted"]
            batch = state["progress"]["batches"]
            job_log(job.id).info("experiment %d: resuming epoch %d at batch %d", job.id, state["epoch"], batch)
            return mid_epoch
        if resume is not None:
            job_log(job.id).info("experiment %d: resuming after epoch %d", job.id, resume.epoch)
        return resume

    def _mid_epoch_point(self, job: ClaimedJob, epoch: int, device: torch.device) -> CheckpointContent | None:
        """The checkpoint a graceful shutdown left inside `epoch`, if it is there and sound."""
        try:
            point = self.store.resume_point(job.id)
            if point is None or point[0] != epoch:
                return None
            return load_checkpoint(point[1], map_location=device)
        except (CorruptCheckpoint, UnreadableCheckpoint) as exc:
            job_log(job.id).warning("experiment %d: ignoring the mid-epoch checkpoint: %s", job.id, exc)
            return None

    def _train(self, job: ClaimedJob, should_stop: Callable[[], bool]) -> Outcome:
        spec = job.spec
        device = resolve_device(spec.device)
        environment = {**runtime_environment(device), "precision": resolve_precision(spec.precision, device)}
        self.store.heartbeat(job, device=str(device), environment=environment)
        resume = self._resume_point(job, device)
        dataset = open_dataset(spec.dataset, self.settings, self.store)
        initial_weights = self._initial_weights(spec) if resume is None else None
        with self._run_log(job, dataset) as run_log:
            return self._fit(job, device, dataset, resume, initial_weights, run_log, should_stop)

    @contextmanager
    def _run_log(self, job: ClaimedJob, dataset: Dataset) -> Iterator[RunLog | None]:
        """TensorBoard files for the run, where enabled (TRAINLAB_TENSORBOARD) and installed."""
        run_log = None
        if self.settings.tensorboard:
            try:
                run_log = RunLog(self.settings.run_dir(job.id), job.spec)
                run_log.images(dataset.train.images)
            except ImportError as exc:
                job_log(job.id).warning("experiment %d: no TensorBoard files (%s)", job.id, exc)
        try:
            yield run_log
        finally:
            if run_log is not None:
                run_log.close()

    def _fit(
        self,
        job: ClaimedJob,
        device: torch.device,
        dataset: Dataset,
        resume: CheckpointContent | None,
        initial_weights: dict[str, torch.Tensor] | None,
        run_log: RunLog | None,
        should_stop: Callable[[], bool],
    ) -> Outcome:
        spec = job.spec

        def record(metrics: EpochMetrics, checkpoint: bytes) -> None:
            # Training goes on meanwhile; the next epoch's end waits for this write (InOrderRecorder).
            self._until_reachable(
                lambda: self.store.record_epoch(job, metrics, checkpoint),
                f"experiment {job.id}: recording epoch {metrics.epoch}",
            )
            if run_log is not None:
                run_log.epoch(metrics)
            values = metrics.model_dump(include=VAL_METRICS | {"train_loss", "val_loss", "duration_s", "samples_per_s"})
            job_log(job.id).info(
                "experiment=%d epoch=%d/%d %s", job.id, metrics.epoch, spec.epochs,
                " ".join(f"{k}={v:.4g}" for k, v in values.items() if v is not None),
            )  # fmt: skip

        def progress(data: dict) -> None:
            try:
                self.store.progress(job, **data)
            except LeaseLost:
                pass  # the lease thread notices and stops the job
            except DatabaseUnavailable:
                pass  # only a progress event: the next one, or the epoch's record, follows

        with InOrderRecorder(record) as recorder:
            result = fit(
                spec, dataset, device, on_epoch=recorder.submit, resume=resume, initial_weights=initial_weights,
                should_stop=should_stop, on_progress=progress, progress_every_s=self.settings.progress_interval_s,
            )  # fmt: skip
        test = None
        if dataset.test is not None and spec.task == "classification":
            predictor = Predictor(self.store.checkpoint_data(self.store.find_checkpoint(job.id)), device)
            evaluation = Evaluation.of(predictor, dataset.test)
            test = (evaluation.loss, evaluation.accuracy)
            job_log(job.id).info(
                "experiment %d: epoch %d on the test split: accuracy %.4f", job.id, predictor.epoch, test[1]
            )
        if run_log is not None and (best := self.store.get_experiment(job.id).best) is not None:
            run_log.finish({k: v for k, v in best.model_dump(exclude={"epoch"}).items() if v is not None})
        return Outcome(result.stop_reason, test)

    def _initial_weights(self, spec: ExperimentSpec) -> dict[str, torch.Tensor] | None:
        """The weights a fresh run starts from: ImageNet's (torchvision classifiers), or an earlier experiment's
        best (any model)."""
        pretrained = spec.model.pretrained
        if pretrained == "imagenet":
            return imagenet_state(spec.model.kind, self.settings.allow_downloads)
        if isinstance(pretrained, FromExperiment):
            ref = self.store.find_checkpoint(pretrained.experiment)
            return load_checkpoint(self.store.checkpoint_data(ref)).model_state
        return None

    def _finish(self, job: ClaimedJob, status: Status, error: str | None = None, **outcome) -> None:
        try:
            self._until_reachable(
                lambda: self.store.finish(job, status, error, **outcome), f"experiment {job.id}: marking it {status}"
            )
        except LeaseLost as exc:
            job_log(job.id).warning("experiment %d: could not mark it %s: %s", job.id, status, exc)
        except DatabaseUnavailable:  # stopping: its lease expires and another worker resumes it from its checkpoint
            log.warning("experiment %d: left to its lease; the database could not be told it is %s", job.id, status)
