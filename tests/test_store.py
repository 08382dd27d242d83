"""The store's job semantics on SQLite and PostgreSQL: atomic claims, leases, fencing, legal transitions."""

from __future__ import annotations

import hashlib
import multiprocessing
import time
from concurrent.futures import ThreadPoolExecutor
from types import SimpleNamespace

import pytest
from pydantic import ValidationError
from sqlalchemy import text, update
from sqlalchemy.exc import DBAPIError, IntegrityError

from service.errors import Conflict, InvalidInput, NotFound
from service.schemas import ExperimentUpdate, Status
from service.specs import EpochMetrics, ExperimentSpec
from service.store import (
    FINAL_CHECKPOINT_TTL_S,
    CheckpointRow,
    CorruptCheckpoint,
    DatabaseUnavailable,
    Idempotency,
    LeaseLost,
    Store,
    Trial,
)
from tests.conftest import free_port, migrated

SPEC = ExperimentSpec.model_validate({"dataset": {"name": "digits"}, "model": {"kind": "mlp"}, "epochs": 2})
LEASE = {"lease_s": 30.0, "max_attempts": 3}


def metrics(epoch: int, val_accuracy: float = 0.5) -> EpochMetrics:
    return EpochMetrics(
        epoch=epoch, train_loss=1.0, train_accuracy=0.5, val_loss=1.0 - val_accuracy, val_accuracy=val_accuracy,
        lr=0.1, duration_s=1.0, samples_per_s=100.0,
    )  # fmt: skip


@pytest.fixture
def store(db_url: str):
    store = Store(migrated(db_url))
    yield store
    store.close()


def submit(store: Store, spec: ExperimentSpec = SPEC) -> int:
    return store.create_experiment(spec)[0].id


def _claim_all(url: str, worker: str, start, results) -> None:
    store = Store(url)
    start.wait()
    claimed = []
    while (job := store.claim(worker, **LEASE)) is not None:
        claimed.append(job.id)
    store.close()
    results.put((worker, claimed))


def test_concurrent_claims_never_hand_out_a_job_twice(store: Store) -> None:
    ids = {submit(store) for _ in range(60)}
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
    first, second = submit(store), submit(store)
    assert store.claim("w", **LEASE).id == first
    assert store.claim("w", **LEASE).id == second
    assert store.claim("w", **LEASE) is None


def test_epoch_records_metrics_checkpoint_and_best(store: Store) -> None:
    submit(store)
    job = store.claim("w", **LEASE)
    store.record_epoch(job, metrics(1, 0.7), b"one")
    store.record_epoch(job, metrics(2, 0.6), b"two")
    experiment = store.get_experiment(job.id)
    assert experiment.current_epoch == 2
    assert experiment.best.epoch == 1 and experiment.best.val_accuracy == 0.7
    assert [m.epoch for m in store.list_metrics(job.id)] == [1, 2]
    assert [m.epoch for m in store.list_metrics(job.id, since_epoch=1)] == [2]
    best = store.find_checkpoint(job.id)
    assert best.epoch == 1 and store.checkpoint_data(best) == b"one"
    assert store.checkpoint_data(store.list_checkpoints(job.id)[0]) == b"two"
    # The same epoch twice is refused by the primary key, and nothing of the second attempt is kept.
    with pytest.raises(IntegrityError):
        store.record_epoch(job, metrics(2, 0.9), b"again")
    assert store.get_experiment(job.id).best.epoch == 1


def test_the_best_checkpoint_follows_a_running_job_and_stays_once_it_has_finished(store: Store) -> None:
    # Another process's view of the same database (an API), looking while the worker writes.
    api = Store(store.url)
    submit(store)
    job = store.claim("w", **LEASE)
    store.record_epoch(job, metrics(1, 0.6), b"one")
    assert api.find_checkpoint(job.id).epoch == 1
    store.record_epoch(job, metrics(2, 0.7), b"two")
    assert api.find_checkpoint(job.id).epoch == 2  # not a remembered answer while it runs
    store.finish(job, Status.succeeded)
    for _ in range(2):  # found, then remembered
        assert api.find_checkpoint(job.id) == store.find_checkpoint(job.id)
        assert api.checkpoint_data(api.find_checkpoint(job.id)) == b"two"
        assert api.find_checkpoint(job.id, epoch=2) == api.find_checkpoint(job.id)
        with pytest.raises(NotFound, match="kept: 2"):  # epoch 1's, deleted by the retention policy
            api.find_checkpoint(job.id, epoch=1)
    with pytest.raises(LeaseLost):  # why remembering is safe: nothing is written after the end
        store.record_epoch(job, metrics(3, 0.9), b"three")
    assert api.find_checkpoint(job.id).epoch == store.find_checkpoint(job.id).epoch == 2
    api.close()


def test_writes_from_a_stale_attempt_are_refused(store: Store) -> None:
    submit(store)
    stale = store.claim("old-worker", **LEASE)
    store.finish(stale, Status.queued)  # handed back ...
    current = store.claim("new-worker", **LEASE)  # ... and taken by another worker
    assert current.attempt == stale.attempt + 1
    with pytest.raises(LeaseLost):
        store.record_epoch(stale, metrics(1), b"stale")
    with pytest.raises(LeaseLost):
        store.finish(stale, Status.succeeded)
    assert store.list_metrics(current.id) == [] and store.list_checkpoints(current.id) == []
    store.record_epoch(current, metrics(1), b"fresh")
    store.finish(current, Status.succeeded)
    experiment = store.get_experiment(current.id)
    assert experiment.status is Status.succeeded and experiment.worker_id == "new-worker"


def test_finished_jobs_cannot_change_state(store: Store) -> None:
    submit(store)
    job = store.claim("w", **LEASE)
    store.finish(job, Status.failed, "boom")
    for status in (Status.succeeded, Status.queued, Status.running):
        with pytest.raises((LeaseLost, ValueError)):
            store.finish(job, status)
    assert store.get_experiment(job.id).error == "boom"
    assert store.claim("w", **LEASE) is None


def test_an_expired_lease_is_taken_over_and_the_old_worker_fenced_off(store: Store) -> None:
    experiment_id = submit(store)
    lost = store.claim("crashed", **LEASE)
    store.record_epoch(lost, metrics(1), b"one")
    store.heartbeat(lost, lease_s=30)  # a live worker renews ...
    assert store.claim("other", **LEASE) is None  # ... so nobody else may take it
    store.heartbeat(lost, lease_s=0.3)  # ... until it stops renewing: its last lease runs out
    time.sleep(0.4)
    taken = store.claim("other", **LEASE)
    assert (taken.id, taken.attempt) == (experiment_id, 2)
    for write in (lambda: store.heartbeat(lost, lease_s=30), lambda: store.record_epoch(lost, metrics(2), b"zombie")):
        with pytest.raises(LeaseLost):
            write()
    assert not store.owns(lost) and store.owns(taken)
    store.record_epoch(taken, metrics(2), b"two")
    store.finish(taken, Status.succeeded)
    attempts = store.list_attempts(experiment_id)
    assert [(a.attempt, a.worker_id, a.outcome) for a in attempts] == [
        (1, "crashed", "lease expired"), (2, "other", "succeeded")
    ]  # fmt: skip
    assert attempts[0].ended_at <= attempts[1].claimed_at  # never two holders at once
    assert [m.epoch for m in store.list_metrics(experiment_id)] == [1, 2]


def test_a_worker_frozen_inside_a_write_keeps_its_job_no_longer_than_its_lease(db_url: str) -> None:
    """A worker stopped between two statements of a transaction (SIGSTOP, a laptop lid) holds the job's row lock,
    which claims skip: the server ends such a transaction once it has been idle for a lease, so that the job can be
    taken over, and the frozen worker, when it wakes, is told the database dropped it, not handed a broken one."""
    if db_url.startswith("sqlite"):
        pytest.skip("SQLite's write lock is a file lock of the process that holds it: no server can end it")
    frozen_store, other_store = Store(migrated(db_url), idle_transaction_s=0.5), Store(db_url, idle_transaction_s=0.5)
    try:
        experiment_id = submit(frozen_store)
        frozen = frozen_store.claim("frozen", lease_s=0.5, max_attempts=3)
        with frozen_store.engine.connect() as conn:  # its first statement begins the transaction, as a write's does
            conn.execute(
                text("UPDATE experiments SET heartbeat_at = heartbeat_at WHERE id = :id"), {"id": experiment_id}
            )
            time.sleep(1.0)  # stopped mid-transaction, its lease running out
            taken = other_store.claim("other", lease_s=30, max_attempts=3)
            assert taken is not None and (taken.id, taken.attempt) == (experiment_id, 2)
            with pytest.raises(DatabaseUnavailable):  # it wakes: its transaction is gone
                conn.execute(text("SELECT 1"))
        with pytest.raises(LeaseLost):  # and its next write, on a new connection, finds the job taken
            frozen_store.heartbeat(frozen, lease_s=30)
    finally:
        frozen_store.close()
        other_store.close()


def test_a_job_that_keeps_losing_its_worker_fails_after_max_attempts(store: Store) -> None:
    experiment_id = submit(store)
    for attempt in (1, 2, 3):
        assert store.claim(f"w{attempt}", lease_s=0.05, max_attempts=3).attempt == attempt
        time.sleep(0.1)
    assert store.claim("w4", lease_s=0.05, max_attempts=3) is None
    experiment = store.get_experiment(experiment_id)
    assert experiment.status is Status.failed and "3 times" in experiment.error
    assert [a.outcome for a in store.list_attempts(experiment_id)] == ["lease expired"] * 3


def test_cancel_queued_and_running_and_refuse_finished(store: Store) -> None:
    queued, running = submit(store), submit(store)
    assert store.cancel(queued).status is Status.cancelled
    job = store.claim("w", **LEASE)
    assert job.id == running
    store.record_epoch(job, metrics(1), b"one")
    cancelled = store.cancel(running)
    assert cancelled.status is Status.cancelled and "after epoch 1" in cancelled.stop_reason
    with pytest.raises(LeaseLost):  # the worker's next write is refused: it stops there
        store.record_epoch(job, metrics(2), b"two")
    assert store.checkpoint_data(store.find_checkpoint(running)) == b"one"  # kept for /predict
    with pytest.raises(Conflict, match="cancelled"):
        store.cancel(running)
    assert store.list_attempts(running)[0].outcome == "cancelled"


def test_deleting_takes_all_that_was_recorded_and_never_hands_the_id_on(store: Store, monkeypatch) -> None:
    # The store's own clock, so that a busy machine cannot expire the remembered lookup early (it did, in CI).
    now = [time.monotonic()]
    monkeypatch.setattr("service.store.time", SimpleNamespace(monotonic=lambda: now[0]))
    api = Store(store.url)  # another API process, which remembers the finished experiment's checkpoint
    done, queued = submit(store), submit(store)
    job = store.claim("w", **LEASE)
    store.record_epoch(job, metrics(1), b"one")
    store.log(done, "INFO", "a line")
    store.finish(job, Status.succeeded)
    assert store.find_checkpoint(done) == api.find_checkpoint(done)  # remembered by both

    with pytest.raises(Conflict, match="is queued: cancel it first"):
        store.delete_experiment(queued)
    transfer = ExperimentSpec.model_validate(
        {"dataset": {"name": "digits"}, "model": {"kind": "resnet18", "pretrained": {"experiment": done}}}
    )
    starts_from_done = submit(store, transfer)
    with pytest.raises(Conflict, match=f"experiment {starts_from_done} is queued or running and starts from"):
        store.delete_experiment(done)
    store.cancel(starts_from_done)
    rerun = store.create_experiment(SPEC, rerun_of=done)[0].id
    store.cancel(rerun)

    store.delete_experiment(done)
    for read in (store.get_experiment, store.list_metrics, store.list_attempts, store.events, store.find_checkpoint):
        with pytest.raises(NotFound):
            read(done)
    with store.engine.connect() as conn:
        for table in ("metrics", "checkpoints", "events", "attempts"):
            assert conn.scalar(text(f"SELECT count(*) FROM {table} WHERE experiment_id = {done}")) == 0, table
    assert store.get_experiment(rerun).rerun_of is None
    store.log(done, "INFO", "its worker's last words, after a cancel")  # dropped, not an error
    # The other process answers from memory until its remembered lookup expires, then says it is gone.
    assert api.find_checkpoint(done).epoch == 1
    now[0] += FINAL_CHECKPOINT_TTL_S + 0.1
    with pytest.raises(NotFound):
        api.find_checkpoint(done)
    with pytest.raises(NotFound):
        store.delete_experiment(done)
    with pytest.raises(NotFound):  # a rerun whose original was deleted since it was read
        store.create_experiment(SPEC, rerun_of=done)

    store.delete_experiment(rerun)  # the newest: its id is not handed to the next experiment
    assert submit(store) == rerun + 1
    api.close()


def test_a_running_experiment_can_be_renamed_and_tagged_without_touching_its_training(store: Store) -> None:
    experiment_id = submit(store)
    job = store.claim("w", **LEASE)
    store.record_epoch(job, metrics(1), b"one")
    tagged = store.update_experiment(experiment_id, ExperimentUpdate(name="renamed", tags=["b", "a"], notes="n"))
    assert (tagged.name, tagged.spec.name, tagged.tags, tagged.notes) == ("renamed", "renamed", ["a", "b"], "n")
    assert tagged.spec.model_copy(update={"name": SPEC.name}) == job.spec  # nothing else of the spec changed
    # The worker's lease and writes are untouched: it records its next epoch and finishes.
    store.heartbeat(job, lease_s=30)
    store.record_epoch(job, metrics(2), b"two")
    store.finish(job, Status.succeeded)
    done = store.get_experiment(experiment_id)
    assert (done.status, done.current_epoch, done.name, done.tags) == (Status.succeeded, 2, "renamed", ["a", "b"])
    # Replacing keeps a tag given again and drops the others; a tag is found whole, in any alphabet.
    assert store.update_experiment(experiment_id, ExperimentUpdate(tags=["b", "größe", "b"])).tags == ["b", "größe"]

    def found(*tags: str) -> int:
        return store.list_experiments(status=None, limit=10, offset=0, tags=tags)[1]

    assert (found("b", "größe"), found("b"), found("gr"), found('"b"'), found("b", "a")) == (1, 1, 0, 0, 0)
    with pytest.raises(NotFound):
        store.update_experiment(experiment_id + 1, ExperimentUpdate(notes="x"))


def test_tags_added_and_removed_at_the_same_time_all_count(store: Store) -> None:
    """`trainlab edit --tag` from two terminals at once: each edit adds its tag in one write, so neither is lost."""
    experiment_id = submit(store)
    store.update_experiment(experiment_id, ExperimentUpdate(tags=["old", "keep"]))

    def tag(i: int) -> None:
        store.update_experiment(experiment_id, ExperimentUpdate(add_tags=[f"t{i}"], remove_tags=["old", "absent"]))

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(tag, range(8)))
    assert store.get_experiment(experiment_id).tags == sorted(["keep", *(f"t{i}" for i in range(8))])
    # At most 20 tags, counted after the change; a refused change keeps what was there.
    with pytest.raises(InvalidInput, match="would have 21 tags; a run has at most 20") as refused:
        store.update_experiment(experiment_id, ExperimentUpdate(add_tags=[f"u{i}" for i in range(12)]))
    assert refused.value.loc == ["body", "add_tags"]
    assert len(store.get_experiment(experiment_id).tags) == 9
    with pytest.raises(ValidationError, match="give tags .the whole list. or add_tags and remove_tags, not both"):
        ExperimentUpdate(tags=["a"], add_tags=["b"])


def test_deleting_a_sweep_takes_its_trials(store: Store) -> None:
    trials = [Trial(SPEC.model_copy(update={"seed": seed}), {"seed": seed}, []) for seed in range(3)]
    sweep_id, _ = store.create_sweep("seeds", {}, trials)
    ids = [e.id for e in store.get_sweep(sweep_id)[2]]
    store.finish(store.claim("w", **LEASE), Status.succeeded)
    with pytest.raises(Conflict, match=f"queued or running trials \\({ids[1]}, {ids[2]}\\)"):
        store.delete_sweep(sweep_id)
    for trial in ids[1:]:
        store.cancel(trial)
    assert store.delete_sweep(sweep_id) == ids
    with pytest.raises(NotFound):
        store.get_sweep(sweep_id)
    assert store.list_experiments(status=None, limit=10, offset=0)[1] == 0


def test_listing_filters_by_status_dataset_model_name_and_sweep(store: Store) -> None:
    def spec(name: str, dataset: str, model: dict) -> ExperimentSpec:
        return ExperimentSpec.model_validate({"name": name, "dataset": {"name": dataset}, "model": model})

    cnn = submit(store, spec("CNN, lr 1e-3", "mnist-10k", {"kind": "cnn"}))
    mlp = submit(store, spec("mlp_50%", "mnist-10k", {"kind": "mlp"}))
    small = submit(store, spec("mlp 5", "digits", {"kind": "mlp"}))
    sweep_id, _ = store.create_sweep("two", {}, [Trial(SPEC, {}, []), Trial(SPEC, {}, [])])
    trials = [e.id for e in store.get_sweep(sweep_id)[2]]
    store.cancel(cnn)

    def ids(**filters) -> list[int]:
        items, total = store.list_experiments(status=filters.pop("status", None), limit=50, offset=0, **filters)
        assert total == len(items)
        return [e.id for e in items]

    assert ids() == [*reversed(trials), small, mlp, cnn]
    assert ids(dataset="mnist-10k") == [mlp, cnn]
    assert ids(model="mlp") == [*reversed(trials), small, mlp]
    assert ids(model="mlp", dataset="mnist-10k") == [mlp]
    assert ids(name="cnn") == [cnn]  # any case
    assert ids(name="50%") == [mlp] and ids(name="_") == [mlp]  # % and _ are themselves, not wildcards
    assert ids(sweep_id=sweep_id) == list(reversed(trials))
    assert ids(status=Status.cancelled) == [cnn] and ids(status=Status.queued, dataset="mnist-10k") == [mlp]
    assert ids(dataset="nothing") == [] and ids(sweep_id=sweep_id + 1) == []


def test_listing_sorts_by_the_best_epoch_s_metrics_with_runs_without_one_last(store: Store) -> None:
    """`val_accuracy`: the most accurate best epoch first; `val_loss`: the lowest first (a regression has no
    accuracy); runs that have finished no epoch last, newest first, as are ties."""
    a07, a09, a08, a09_later, unfinished = (submit(store) for _ in range(5))
    for accuracy in (0.7, 0.9, 0.8, 0.9):  # claimed oldest first
        store.record_epoch(store.claim("w", **LEASE), metrics(1, accuracy), b"weights")

    def ids(sort: str) -> list[int]:
        items, total = store.list_experiments(status=None, limit=50, offset=0, sort=sort)
        assert total == 5
        return [e.id for e in items]

    assert ids("newest") == [unfinished, a09_later, a08, a09, a07]
    assert ids("oldest") == [a07, a09, a08, a09_later, unfinished]
    assert ids("val_accuracy") == [a09_later, a09, a08, a07, unfinished]
    assert ids("val_loss") == [a09_later, a09, a08, a07, unfinished]  # metrics() makes the loss 1 - accuracy
    page, _ = store.list_experiments(status=None, limit=2, offset=2, sort="val_accuracy")
    assert [e.id for e in page] == [a08, a07]


def test_damaged_checkpoints_are_detected_and_rewinding_forgets_later_epochs(store: Store) -> None:
    submit(store)
    job = store.claim("w", **LEASE)
    for epoch, accuracy in ((1, 0.5), (2, 0.9), (3, 0.6)):
        store.record_epoch(job, metrics(epoch, accuracy), f"epoch-{epoch}".encode())
    with store.engine.begin() as conn:  # a byte changes on disk
        conn.execute(update(CheckpointRow).where(CheckpointRow.epoch == 3).values(data=b"epoch-X"))
    newest = store.list_checkpoints(job.id)[0]
    with pytest.raises(CorruptCheckpoint, match="SHA-256"):
        store.checkpoint_data(newest)
    store.rewind(job, 2)
    assert [m.epoch for m in store.list_metrics(job.id)] == [1, 2]
    assert [c.epoch for c in store.list_checkpoints(job.id)] == [2]
    experiment = store.get_experiment(job.id)
    assert experiment.best.epoch == 2 and experiment.current_epoch == 2
    store.record_epoch(job, metrics(3, 0.7), b"epoch-3")  # epoch 3 is trained again and recorded once
    assert [m.epoch for m in store.list_metrics(job.id)] == [1, 2, 3]


def test_idempotent_submission(store: Store) -> None:
    key = Idempotency("retry-me", hashlib.sha256(b"body").hexdigest())
    first, created = store.create_experiment(SPEC, idempotency=key)
    again, created_again = store.create_experiment(SPEC, idempotency=key)
    assert created and not created_again and again.id == first.id
    with pytest.raises(InvalidInput, match="different request body"):
        store.create_experiment(SPEC, idempotency=Idempotency("retry-me", hashlib.sha256(b"other").hexdigest()))
    assert store.list_experiments(status=None, limit=10, offset=0)[1] == 1


def test_only_failures_of_the_database_itself_are_database_unavailable(db_url: str, tmp_path) -> None:
    """A database that cannot be reached is DatabaseUnavailable (a 503; workers wait it out). A statement's own
    error, such as a missing table, is not: retrying it would never end."""
    unmigrated = Store(db_url)
    try:
        with pytest.raises(DBAPIError, match="no such table|does not exist"):
            unmigrated.list_experiments(status=None, limit=1, offset=0)
    finally:
        unmigrated.close()
    # SQLite: a directory where the file should be; PostgreSQL: a port nothing listens on.
    nowhere = f"postgresql+psycopg://postgres@127.0.0.1:{free_port()}/trainlab"
    unreachable = Store(f"sqlite:///{tmp_path}" if db_url.startswith("sqlite") else nowhere)
    try:
        with pytest.raises(DatabaseUnavailable) as raised:
            unreachable.list_experiments(status=None, limit=1, offset=0)
        assert "unable to open database file" in raised.value.reason or "refused" in raised.value.reason
        assert raised.value.status_code == 503
    finally:
        unreachable.close()
