"""The job loop: claim a queued experiment, train it, record every epoch, mark how it ended; repeat."""

from __future__ import annotations

import logging
import os
import socket
import threading
import traceback
import uuid
from dataclasses import dataclass

from service.schemas import Status
from service.settings import Settings
from service.specs import EpochMetrics
from service.store import ClaimedJob, LeaseLost, Store
from worker.checkpoints import load_checkpoint
from worker.datasets import load_dataset
from worker.engine import Interrupted, fit, resolve_device, runtime_environment
from worker.evaluation import Evaluation
from worker.inference import Predictor

log = logging.getLogger("trainlab.worker")


@dataclass(frozen=True)
class Outcome:
    stop_reason: str | None
    test: tuple[float, float] | None  # (loss, accuracy) of the best checkpoint on the test split


def new_worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"


class Worker:
    def __init__(self, store: Store, settings: Settings, worker_id: str | None = None) -> None:
        self.store = store
        self.settings = settings
        self.worker_id = worker_id or new_worker_id()
        self.stopping = threading.Event()

    def run(self, *, once: bool = False) -> None:
        """Serve jobs until `stopping` is set (or, with `once`, until the queue is empty)."""
        log.info("worker %s ready (polling every %.1fs)", self.worker_id, self.settings.poll_interval_s)
        while not self.stopping.is_set():
            job = self.store.claim(self.worker_id)
            if job is None:
                if once:
                    return
                self.stopping.wait(self.settings.poll_interval_s)
                continue
            self.run_job(job)

    def run_job(self, job: ClaimedJob) -> None:
        log.info("experiment %d attempt %d: claimed (%s)", job.id, job.attempt, job.spec.name)
        try:
            outcome = self._train(job)
        except Interrupted:
            log.info("experiment %d: stopping on request; handing it back to the queue", job.id)
            self._finish(job, Status.queued)
        except LeaseLost as exc:
            log.warning("experiment %d: %s; dropping it", job.id, exc)
        except Exception as exc:  # a failed job must never take the worker down with it
            log.error("experiment %d failed:\n%s", job.id, traceback.format_exc())
            self._finish(job, Status.failed, f"{type(exc).__name__}: {exc}")
        else:
            log.info("experiment %d: succeeded%s", job.id, f" ({outcome.stop_reason})" if outcome.stop_reason else "")
            self._finish(job, Status.succeeded, stop_reason=outcome.stop_reason, test=outcome.test)

    def _train(self, job: ClaimedJob) -> Outcome:
        spec = job.spec
        device = resolve_device(spec.device)
        self.store.heartbeat(job, device=str(device), environment=runtime_environment(device))
        resume = None
        latest = self.store.latest_checkpoint(job.id)
        if latest is not None:
            resume = load_checkpoint(self.store.checkpoint_data(latest), map_location=device)
            log.info("experiment %d: resuming after epoch %d", job.id, resume.epoch)
        dataset = load_dataset(spec.dataset, self.settings.data_dir)

        def record(metrics: EpochMetrics, checkpoint: bytes) -> None:
            self.store.record_epoch(job, metrics, checkpoint)
            log.info(
                "experiment %d epoch %d/%d: train_loss=%.4f val_loss=%.4f val_accuracy=%.4f (%.1fs, %.0f samples/s)",
                job.id, metrics.epoch, spec.epochs, metrics.train_loss, metrics.val_loss,
                metrics.val_accuracy, metrics.duration_s, metrics.samples_per_s,
            )  # fmt: skip

        result = fit(spec, dataset, device, on_epoch=record, resume=resume, should_stop=self.stopping.is_set)
        test = None
        if dataset.test is not None:
            best = Predictor(self.store.checkpoint_data(self.store.find_checkpoint(job.id)), device)
            evaluation = Evaluation.of(best, dataset.test)
            test = (evaluation.loss, evaluation.accuracy)
            log.info("experiment %d: epoch %d on the test split: accuracy %.4f", job.id, best.epoch, test[1])
        return Outcome(result.stop_reason, test)

    def _finish(self, job: ClaimedJob, status: Status, error: str | None = None, **outcome) -> None:
        try:
            self.store.finish(job, status, error, **outcome)
        except LeaseLost as exc:
            log.warning("experiment %d: could not mark it %s: %s", job.id, status, exc)
