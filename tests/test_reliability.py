"""Jobs survive real kills: `kill -9`, a frozen worker, damaged checkpoints, cancels, and a crowd of workers that
keep dying. On SQLite and on PostgreSQL."""

from __future__ import annotations

import hashlib
import io
import os
import random
import re
import signal
import sqlite3
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TypeVar

import httpx
import pytest
import torch
from sqlalchemy import make_url, select, update

from service.client import Client
from service.schemas import Status
from service.specs import ExperimentSpec
from service.store import CheckpointRow, Store
from tests.conftest import (
    database_outage,
    deployment,
    load_bundled,
    malicious_checkpoint,
    new_database,
    tiny_spec,
    wait_for_status,
)
from worker.engine import fit

# Short leases so that a dead worker's job is taken over within seconds.
FAST_LEASES = {"TRAINLAB_LEASE_S": "2", "TRAINLAB_HEARTBEAT_S": "0.3"}
# About 1.5 s an epoch on 2 cores: long enough to kill a worker in the middle of one. Four epochs, as issue 5's
# kill test names them: two before the kill, two after it.
KILL_SPEC = {
    "name": "kill-me",
    "dataset": {"name": "mnist-10k"},
    "model": {"kind": "mlp", "hidden": [128]},
    "batch_size": 8,
    "epochs": 4,
    "checkpoints": {"keep_last": 2},
}
EPOCHS = list(range(1, KILL_SPEC["epochs"] + 1))
COMPARED = ("train_loss", "train_accuracy", "val_loss", "val_accuracy", "lr")
T = TypeVar("T")


@pytest.fixture(scope="module")
def uninterrupted() -> list[dict]:
    """KILL_SPEC trained start to finish in this process: what every interrupted run must reproduce."""
    spec = ExperimentSpec.model_validate(KILL_SPEC)
    rows: list[dict] = []
    fit(spec, load_bundled(spec.dataset), torch.device("cpu"),
        on_epoch=lambda m, _: rows.append(m.model_dump(include=set(COMPARED))))  # fmt: skip
    return rows


def metrics(client: httpx.Client, experiment_id: int) -> list[dict]:
    return client.get(f"/experiments/{experiment_id}/metrics").json()


def wait_until(condition, timeout: float = 120, interval: float = 0.05):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if value := condition():
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {condition}")


def assert_history_is_sequential(client: httpx.Client, experiment_id: int) -> list[dict]:
    """No two attempts overlap: each ended before the next was claimed. Every attempt but the last was lost."""
    attempts = client.get(f"/experiments/{experiment_id}/attempts").json()
    for before, after in zip(attempts, attempts[1:], strict=False):
        assert before["ended_at"] is not None and before["ended_at"] <= after["claimed_at"], attempts
    return attempts


@pytest.mark.parametrize("kill_after_epoch", [2, 0], ids=["after-epoch-2", "before-first-checkpoint"])
def test_kill_9_resumes_on_another_worker_and_matches_an_uninterrupted_run(
    tmp_path: Path, db_url: str, client_for, uninterrupted: list[dict], kill_after_epoch: int
) -> None:
    with deployment(tmp_path, db_url, workers=1, **FAST_LEASES) as dep:
        client = client_for(dep)
        experiment_id = client.post("/experiments", json=KILL_SPEC).json()["id"]
        first = dep.workers()[0]
        if kill_after_epoch:
            wait_until(lambda: len(metrics(client, experiment_id)) >= kill_after_epoch)
        else:  # training has started (the device is recorded first), no epoch finished yet
            wait_until(lambda: client.get(f"/experiments/{experiment_id}").json()["device"])
        first.send_signal(signal.SIGKILL)
        first.wait()
        assert len(metrics(client, experiment_id)) == kill_after_epoch
        assert client.get(f"/experiments/{experiment_id}").json()["status"] == "running"  # its owner is dead

        dep.start_worker()
        done = wait_for_status(client, experiment_id, {"succeeded", "failed"}, timeout=180)
        assert done["status"] == "succeeded" and done["attempt"] == 2, dep.logs("worker")
        rows = metrics(client, experiment_id)
        assert [r["epoch"] for r in rows] == EPOCHS  # each epoch exactly once
        assert [{k: r[k] for k in COMPARED} for r in rows] == uninterrupted
        if kill_after_epoch:
            assert f"resuming after epoch {kill_after_epoch}" in dep.logs("worker")
        attempts = assert_history_is_sequential(client, experiment_id)
        assert [a["outcome"] for a in attempts] == ["lease expired", "succeeded"]


def test_sigterm_mid_epoch_hands_back_a_checkpoint_that_finishes_the_epoch_exactly(
    tmp_path: Path, db_url: str, client_for, uninterrupted: list[dict]
) -> None:
    with deployment(tmp_path, db_url, workers=1) as dep:
        client = client_for(dep)
        experiment_id = client.post("/experiments", json=KILL_SPEC).json()["id"]
        first = dep.workers()[0]
        wait_until(lambda: metrics(client, experiment_id))
        time.sleep(0.5)  # into epoch 2
        first.send_signal(signal.SIGTERM)
        assert first.wait(timeout=60) == 0
        handed_back = client.get(f"/experiments/{experiment_id}").json()
        assert handed_back["status"] == "queued" and handed_back["worker_id"] is None
        assert handed_back["current_epoch"] == 1
        dep.start_worker()
        assert wait_for_status(client, experiment_id, {"succeeded", "failed"}, timeout=180)["status"] == "succeeded"
        rows = metrics(client, experiment_id)
        assert [{k: r[k] for k in COMPARED} for r in rows] == uninterrupted
        assert re.search(r"resuming epoch 2 at batch [1-9]\d*", dep.logs("worker")), dep.logs("worker")
        attempts = assert_history_is_sequential(client, experiment_id)
        assert [a["outcome"] for a in attempts] == ["released", "succeeded"]


def watch(url: str, how: Callable[[Client], T]) -> T:
    with Client(url) as sdk:
        return how(sdk)


def test_a_database_outage_costs_no_epoch_no_job_and_no_worker(
    tmp_path: Path, client_for, uninterrupted: list[dict]
) -> None:
    """PostgreSQL refuses and drops every connection for a while (as a restart does), once while an epoch is being
    recorded and once while the worker polls an empty queue: the API answers 503 meanwhile and stores nothing; the
    worker waits, then records the same epochs an uninterrupted run does and claims the next job."""
    with new_database("postgresql", tmp_path) as db_url, deployment(tmp_path, db_url, workers=1) as dep:
        client = client_for(dep)
        worker = dep.workers()[0]
        experiment_id = client.post("/experiments", json=KILL_SPEC).json()["id"]
        wait_until(lambda: metrics(client, experiment_id))
        # Watching through it with the SDK: its event stream and its wait.
        pool = ThreadPoolExecutor(2)
        streamed = pool.submit(watch, dep.url, lambda sdk: [event.kind for event in sdk.stream(experiment_id)])
        waited = pool.submit(watch, dep.url, lambda sdk: sdk.wait(experiment_id, timeout=180))
        with database_outage(db_url):
            for answer in (client.get(f"/experiments/{experiment_id}"), client.post("/experiments", json=KILL_SPEC),
                           client.get("/healthz")):  # fmt: skip
                assert answer.status_code == 503, answer.text
                assert answer.headers["retry-after"] == "5"
            assert "database cannot be reached" in answer.json()["detail"]
            # Epoch 2 ends within seconds: hold the outage until its write has failed at least once, and until the
            # lease thread, which looks every second, has met the outage too (a fast epoch can fail first).
            failures = ("recording epoch 2: the database cannot be reached", "the lease cannot be renewed")
            wait_until(lambda: all(failure in dep.logs("worker") for failure in failures), timeout=60)
        done = wait_for_status(client, experiment_id, {"succeeded", "failed"}, timeout=180)
        assert done["status"] == "succeeded" and done["attempt"] == 1, dep.logs("worker")
        assert [{k: r[k] for k in COMPARED} for r in metrics(client, experiment_id)] == uninterrupted
        lease_lines = [line for line in dep.logs("worker").splitlines() if "lease cannot be renewed" in line]
        assert len(lease_lines) == 1 and "the database answers again" in dep.logs("worker")  # once, not each second
        assert waited.result(timeout=60).status == "succeeded"
        kinds = streamed.result(timeout=60)
        assert kinds.count("epoch") == len(EPOCHS) and kinds[-1] == "status", kinds
        pool.shutdown()
        assert client.get("/experiments").json()["total"] == 1  # the POST during the outage stored nothing

        with database_outage(db_url):
            wait_until(lambda: "polling the queue: the database cannot be reached" in dep.logs("worker"), timeout=30)
        tiny = client.post("/experiments", json=tiny_spec()).json()["id"]
        assert wait_for_status(client, tiny, {"succeeded", "failed"}, timeout=120)["status"] == "succeeded"
        assert worker.poll() is None and len(dep.workers()) == 1, dep.logs("worker")
        assert "Traceback" not in dep.logs(), dep.logs()


def test_resume_skips_a_truncated_checkpoint_and_trains_that_epoch_again(
    tmp_path: Path, db_url: str, client_for, uninterrupted: list[dict]
) -> None:
    with deployment(tmp_path, db_url, workers=1, **FAST_LEASES) as dep:
        client = client_for(dep)
        experiment_id = client.post("/experiments", json=KILL_SPEC).json()["id"]
        first = dep.workers()[0]
        wait_until(lambda: len(metrics(client, experiment_id)) >= 2)
        first.send_signal(signal.SIGKILL)
        first.wait()
        store = Store(dep.db_url)
        with store.engine.begin() as conn:  # the newest checkpoint lost its second half (its recorded hash stays)
            data = conn.scalar(select(CheckpointRow.data).where(CheckpointRow.epoch == 2))
            conn.execute(update(CheckpointRow).where(CheckpointRow.epoch == 2).values(data=data[: len(data) // 2]))
        store.close()

        dep.start_worker()
        assert wait_for_status(client, experiment_id, {"succeeded", "failed"}, timeout=180)["status"] == "succeeded"
        rows = metrics(client, experiment_id)
        assert [r["epoch"] for r in rows] == EPOCHS
        assert [{k: r[k] for k in COMPARED} for r in rows] == uninterrupted
        logs = dep.logs("worker")
        assert "skipping the checkpoint of epoch 2" in logs and "SHA-256" in logs
        assert "resuming after epoch 1" in logs


def freeze(process, db_url: str) -> None:
    """SIGSTOP `process`; on SQLite, at a moment it holds no write lock. SQLite's locks are the process's own: one
    held by a frozen worker would stall every writer until it woke. (On PostgreSQL the server ends a worker's
    transaction once it has idled for a lease: test_store.py's frozen worker.)"""
    database = make_url(db_url).database if db_url.startswith("sqlite") else None
    while True:
        process.send_signal(signal.SIGSTOP)
        wait_until(lambda: Path(f"/proc/{process.pid}/stat").read_text().split(") ")[1][0] == "T", timeout=10)
        if database is None or not _sqlite_write_locked(database):
            return
        process.send_signal(signal.SIGCONT)
        time.sleep(0.01)


def _sqlite_write_locked(database: str) -> bool:
    conn = sqlite3.connect(database, timeout=0, isolation_level=None)
    try:
        conn.execute("BEGIN IMMEDIATE")
        conn.execute("ROLLBACK")
        return False
    except sqlite3.OperationalError:  # database is locked
        return True
    finally:
        conn.close()


def test_a_frozen_worker_that_lost_its_lease_records_nothing_more(tmp_path: Path, db_url: str, client_for) -> None:
    with deployment(tmp_path, db_url, workers=1, **FAST_LEASES) as dep:
        client = client_for(dep)
        experiment_id = client.post("/experiments", json=KILL_SPEC).json()["id"]
        frozen = dep.workers()[0]
        frozen_log = next(log for process, log in dep.processes if process is frozen)
        wait_until(lambda: metrics(client, experiment_id))
        freeze(frozen, db_url)  # a laptop lid, a long GC pause, a network partition
        try:
            dep.start_worker()
            wait_until(lambda: client.get(f"/experiments/{experiment_id}").json()["attempt"] == 2, timeout=60)
        finally:
            frozen.send_signal(signal.SIGCONT)
        done = wait_for_status(client, experiment_id, {"succeeded", "failed"}, timeout=180)
        assert done["status"] == "succeeded", dep.logs("worker")
        assert [r["epoch"] for r in metrics(client, experiment_id)] == EPOCHS
        wait_until(lambda: "no longer ours" in frozen_log.read_text(), timeout=30)
        assert frozen.poll() is None  # it dropped the job, not its loop
        attempts = assert_history_is_sequential(client, experiment_id)
        assert [a["outcome"] for a in attempts] == ["lease expired", "succeeded"]
        assert attempts[0]["worker_id"] != attempts[1]["worker_id"] == done["worker_id"]


def test_cancel_queued_and_running_experiments(tmp_path: Path, db_url: str, client_for) -> None:
    with deployment(tmp_path, db_url, workers=1) as dep:
        client = client_for(dep)
        running_id = client.post("/experiments", json={**KILL_SPEC, "epochs": 50}).json()["id"]
        queued_id = client.post("/experiments", json=tiny_spec()).json()["id"]
        cancelled = client.post(f"/experiments/{queued_id}/cancel")
        assert cancelled.status_code == 200 and cancelled.json()["status"] == "cancelled"

        wait_until(lambda: metrics(client, running_id))
        refused = client.delete(f"/experiments/{running_id}")
        assert refused.status_code == 409 and "is running: cancel it first" in refused.json()["detail"]
        response = client.post(f"/experiments/{running_id}/cancel")
        assert response.status_code == 200 and response.json()["status"] == "cancelled"
        recorded = len(metrics(client, running_id))
        wait_until(lambda: "no longer ours" in dep.logs("worker"), timeout=30)
        time.sleep(2)  # longer than an epoch: nothing more is written
        assert len(metrics(client, running_id)) == recorded
        experiment = client.get(f"/experiments/{running_id}").json()
        assert experiment["status"] == "cancelled" and "cancelled by request" in experiment["stop_reason"]
        assert client.post(f"/experiments/{running_id}/cancel").status_code == 409
        assert client.post("/experiments/999999/cancel").status_code == 404

        # The checkpoints stay for /predict, and the worker goes on with the next job.
        image = (Path(__file__).resolve().parent.parent / "examples" / "images" / "mnist-val-7.png").read_bytes()
        predicted = client.post(f"/experiments/{running_id}/predict", files={"file": ("7.png", image, "image/png")})
        assert predicted.status_code == 200
        next_id = client.post("/experiments", json=tiny_spec()).json()["id"]
        assert wait_for_status(client, next_id, {"succeeded", "failed"})["status"] == "succeeded"
        assert [a["outcome"] for a in client.get(f"/experiments/{queued_id}/attempts").json()] == []

        # Deleting it takes its checkpoints, metrics, log and TensorBoard files; nothing else changes.
        tensorboard = tmp_path / "runs" / str(running_id)
        assert tensorboard.is_dir()
        assert client.delete(f"/experiments/{running_id}").status_code == 204
        for view in ("", "/metrics", "/logs", "/checkpoints", "/curves.png"):
            assert client.get(f"/experiments/{running_id}{view}").status_code == 404, view
        gone = client.post(f"/experiments/{running_id}/predict", files={"file": ("7.png", image, "image/png")})
        assert gone.status_code == 404 and f"experiment {running_id} not found" in gone.json()["detail"]
        assert not tensorboard.exists()
        assert client.delete(f"/experiments/{running_id}").status_code == 404
        listed = client.get("/experiments").json()
        assert sorted(e["id"] for e in listed["items"]) == [queued_id, next_id] and listed["total"] == 2


def test_damaged_or_malicious_checkpoints_are_refused_by_predict(tmp_path: Path, db_url: str, client_for) -> None:
    with deployment(tmp_path, db_url, workers=1) as dep:
        client = client_for(dep)
        experiment_id = client.post("/experiments", json=tiny_spec(epochs=1)).json()["id"]
        assert wait_for_status(client, experiment_id, {"succeeded", "failed"})["status"] == "succeeded"
        store = Store(dep.db_url)
        with store.engine.connect() as conn:
            good = conn.scalar(select(CheckpointRow.data))

        def replace(data: bytes, sha256: str | None = None) -> httpx.Response:
            with store.engine.begin() as conn:
                values = {"data": data} if sha256 is None else {"data": data, "sha256": sha256}
                conn.execute(update(CheckpointRow).values(**values))
            # Failed loads are not cached: each request reads the stored bytes again.
            return client.post(f"/experiments/{experiment_id}/predict", files={"file": ("x.png", _png(), "image/png")})

        flipped = bytearray(good)
        flipped[len(flipped) // 2] ^= 0xFF
        for damaged in (bytes(flipped), good[: len(good) // 2]):
            response = replace(damaged)
            assert response.status_code == 409 and "damaged" in response.json()["detail"], response.text

        # Someone with write access to the database plants a pickle that would run code when loaded, with a
        # matching hash: it is refused because checkpoints load as plain weights only.
        sentinel = tmp_path / "pwned"
        planted = malicious_checkpoint(sentinel)
        response = replace(planted, hashlib.sha256(planted).hexdigest())
        assert response.status_code == 409 and "plain weights" in response.json()["detail"], response.text
        assert not sentinel.exists()
        store.close()


# The worker, with its address space capped 3 GB above what it uses once torch is imported.
CAPPED_WORKER = """
import re, resource, runpy, sys, torch
used = int(re.search(r"VmSize:\\s+(\\d+)", open("/proc/self/status").read())[1]) * 1024
resource.setrlimit(resource.RLIMIT_AS, (used + 3 * 2**30, resource.RLIM_INFINITY))
sys.argv = ["worker"]
runpy.run_module("worker", run_name="__main__")
"""


def test_out_of_memory_fails_the_job_with_advice_and_the_worker_goes_on(
    tmp_path: Path, db_url: str, client_for
) -> None:
    with deployment(tmp_path, db_url) as dep:
        dep.spawn("worker", "-c", CAPPED_WORKER)
        client = client_for(dep)
        # 8192 images x 1024 channels x 28 x 28 floats: a 26 GB activation in the first layer.
        greedy = {"dataset": {"name": "mnist-10k"}, "model": {"kind": "cnn", "channels": [1024], "hidden": 8},
                  "batch_size": 8192, "epochs": 1}  # fmt: skip
        greedy_id = client.post("/experiments", json=greedy).json()["id"]
        failed = wait_for_status(client, greedy_id, {"succeeded", "failed"})
        assert failed["status"] == "failed", failed
        assert failed["error"].startswith("out of memory") and "lower batch_size" in failed["error"]
        next_id = client.post("/experiments", json=tiny_spec()).json()["id"]
        assert wait_for_status(client, next_id, {"succeeded", "failed"})["status"] == "succeeded"


def test_200_jobs_4_workers_random_kill_9(tmp_path: Path, db_url: str) -> None:
    """Workers keep being killed mid-job and replaced; every job still succeeds, each epoch is recorded once, and
    the claim history never shows a job under two workers at once."""
    # One thread each: four workers with two torch threads apiece on two cores would mostly wait for each other.
    env = {"TRAINLAB_MAX_ATTEMPTS": "50", "OMP_NUM_THREADS": "1", **FAST_LEASES}
    with deployment(tmp_path, db_url, api=False, **env) as dep:
        store = Store(dep.db_url)
        spec = ExperimentSpec.model_validate(tiny_spec(model={"kind": "mlp", "hidden": [16]}))
        ids = [store.create_experiment(spec.model_copy(update={"name": f"race-{i}"}))[0].id for i in range(200)]
        workers = {dep.start_worker().pid: None for _ in range(4)}
        rng, kills, interrupted = random.Random(0), 0, set()
        deadline = time.monotonic() + 420

        def finished() -> int:
            done = (Status.succeeded, Status.failed)
            return sum(store.list_experiments(status=s, limit=1, offset=0)[1] for s in done)

        while finished() < len(ids) and time.monotonic() < deadline:
            time.sleep(rng.uniform(0.5, 2.0))
            if kills >= 12:
                continue
            # Kill a worker in the middle of a job that no kill has hit yet, so that the kills spread over jobs
            # instead of hitting the same one again while the first few workers are still starting.
            running = store.list_experiments(status=Status.running, limit=50, offset=0)[0]
            targets = {int(e.worker_id.split(":")[1]): e for e in running if e.worker_id and e.id not in interrupted}
            victims = [pid for pid in targets if pid in workers]
            if victims:
                victim = rng.choice(victims)
                os.kill(victim, signal.SIGKILL)
                del workers[victim]
                workers[dep.start_worker().pid] = None
                kills += 1
                # Read after the kill: still running under the dead worker means the kill interrupted it (it may
                # have finished between the listing and the kill).
                job = store.get_experiment(targets[victim].id)
                if job.status == Status.running and job.worker_id == targets[victim].worker_id:
                    interrupted.add(job.id)
        experiments = [store.get_experiment(i) for i in ids]
        assert [e.status for e in experiments] == [Status.succeeded] * len(ids), dep.logs("worker")[-5000:]
        resumed = set()
        for experiment in experiments:
            assert [m.epoch for m in store.list_metrics(experiment.id)] == [1, 2]
            attempts = store.list_attempts(experiment.id)
            for before, after in zip(attempts, attempts[1:], strict=False):
                assert before.ended_at is not None and before.ended_at <= after.claimed_at
                assert before.outcome == "lease expired"
            assert attempts[-1].outcome == "succeeded" and attempts[-1].worker_id == experiment.worker_id
            if len(attempts) > 1:
                resumed.add(experiment.id)
        store.close()
        # Every interrupted job was taken over and finished (a job may also have lost a lease to CPU starvation).
        assert len(interrupted) >= 8 and interrupted <= resumed, (kills, interrupted, resumed)
        print(f"race: {len(ids)} jobs, 4 workers, {kills} kill -9, {len(interrupted)} mid-job, {len(resumed)} resumed")


def _png() -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.new("L", (8, 8), 0).save(buffer, format="PNG")
    return buffer.getvalue()
