"""The store's job semantics against a real SQLite file: atomic claims, fencing, legal transitions."""

from __future__ import annotations

import multiprocessing
from pathlib import Path

import pytest

from service.schemas import Status
from service.specs import EpochMetrics, ExperimentSpec
from service.store import LeaseLost, Store

SPEC = ExperimentSpec.model_validate({"dataset": {"name": "digits"}, "model": {"kind": "mlp"}, "epochs": 2})


def metrics(epoch: int, val_accuracy: float = 0.5) -> EpochMetrics:
    return EpochMetrics(
        epoch=epoch, train_loss=1.0, train_accuracy=0.5, val_loss=1.0 - val_accuracy, val_accuracy=val_accuracy,
        lr=0.1, duration_s=1.0, samples_per_s=100.0,
    )  # fmt: skip


@pytest.fixture
def store(tmp_path: Path):
    store = Store(f"sqlite:///{tmp_path / 'store.db'}")
    store.upgrade()
    yield store
    store.close()


def _claim_all(url: str, worker: str, start, results) -> None:
    store = Store(url)
    start.wait()
    claimed = []
    while (job := store.claim(worker)) is not None:
        claimed.append(job.id)
    store.close()
    results.put((worker, claimed))


def test_concurrent_claims_never_hand_out_a_job_twice(store: Store) -> None:
    ids = {store.create_experiment(SPEC).id for _ in range(60)}
    ctx = multiprocessing.get_context("spawn")
    start, results = ctx.Event(), ctx.Queue()
    processes = [ctx.Process(target=_claim_all, args=(store.url, f"w{i}", start, results)) for i in range(4)]
    for p in processes:
        p.start()
    start.set()
    claims = [results.get(timeout=120) for _ in processes]
    for p in processes:
        p.join(timeout=30)
    claimed = [job_id for _, jobs in claims for job_id in jobs]
    assert sorted(claimed) == sorted(ids)  # each exactly once
    for job_id in ids:
        experiment = store.get_experiment(job_id)
        assert experiment.status is Status.running and experiment.attempt == 1


def test_claims_oldest_first_and_none_when_empty(store: Store) -> None:
    first, second = store.create_experiment(SPEC), store.create_experiment(SPEC)
    assert store.claim("w").id == first.id
    assert store.claim("w").id == second.id
    assert store.claim("w") is None


def test_epoch_records_metrics_checkpoint_and_best(store: Store) -> None:
    store.create_experiment(SPEC)
    job = store.claim("w")
    store.record_epoch(job, metrics(1, 0.7), b"one")
    store.record_epoch(job, metrics(2, 0.6), b"two")
    experiment = store.get_experiment(job.id)
    assert experiment.current_epoch == 2
    assert experiment.best.epoch == 1 and experiment.best.val_accuracy == 0.7
    assert [m.epoch for m in store.list_metrics(job.id)] == [1, 2]
    assert [m.epoch for m in store.list_metrics(job.id, since_epoch=1)] == [2]
    best = store.find_checkpoint(job.id)
    assert best.epoch == 1 and store.checkpoint_data(best) == b"one"
    assert store.checkpoint_data(store.latest_checkpoint(job.id)) == b"two"
    # The same epoch twice is refused by the primary key, and nothing of the second attempt is kept.
    with pytest.raises(Exception, match="UNIQUE"):
        store.record_epoch(job, metrics(2, 0.9), b"again")
    assert store.get_experiment(job.id).best.epoch == 1


def test_writes_from_a_stale_attempt_are_refused(store: Store) -> None:
    store.create_experiment(SPEC)
    stale = store.claim("old-worker")
    store.finish(stale, Status.queued)  # handed back ...
    current = store.claim("new-worker")  # ... and taken by another worker
    assert current.attempt == stale.attempt + 1
    with pytest.raises(LeaseLost):
        store.record_epoch(stale, metrics(1), b"stale")
    with pytest.raises(LeaseLost):
        store.finish(stale, Status.succeeded)
    assert store.list_metrics(current.id) == [] and store.latest_checkpoint(current.id) is None
    store.record_epoch(current, metrics(1), b"fresh")
    store.finish(current, Status.succeeded)
    experiment = store.get_experiment(current.id)
    assert experiment.status is Status.succeeded and experiment.worker_id == "new-worker"


def test_finished_jobs_cannot_change_state(store: Store) -> None:
    store.create_experiment(SPEC)
    job = store.claim("w")
    store.finish(job, Status.failed, "boom")
    for status in (Status.succeeded, Status.queued, Status.running):
        with pytest.raises((LeaseLost, ValueError)):
            store.finish(job, status)
    assert store.get_experiment(job.id).error == "boom"
    assert store.claim("w") is None
