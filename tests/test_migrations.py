"""Alembic owns the schema on SQLite and PostgreSQL; API and worker refuse a database behind it, or an unsafe torch."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import create_engine, text

from service.store import Base, Store
from tests.conftest import REPO, free_port, make_env, migrated


def test_upgrade_head_matches_the_models(tmp_path: Path, db_url: str) -> None:
    url = db_url
    result = subprocess.run(
        [sys.executable, "-m", "alembic", "upgrade", "head"], cwd=REPO, env=make_env(tmp_path, url),
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    store = Store(url)
    try:
        with store.engine.connect() as conn:
            assert compare_metadata(MigrationContext.configure(conn), Base.metadata) == []
        store.check_schema()
    finally:
        store.close()


# Rows as revision 0002 stores them: a run with its metrics and checkpoint, and a sweep with one trial.
SEED_0002 = """
INSERT INTO sweeps (id, name, request, created_at) VALUES (1, 'lr', '{}', '2026-11-26 10:00:00');
INSERT INTO experiments (id, name, spec, status, created_at, attempt, current_epoch, warnings, sweep_id)
    VALUES (1, 'run', '{}', 'succeeded', '2026-11-26 10:00:00', 1, 1, '[]', NULL),
           (2, 'trial', '{}', 'succeeded', '2026-11-26 10:00:00', 1, 1, '[]', 1);
INSERT INTO metrics (experiment_id, epoch, train_loss, train_accuracy, val_loss, val_accuracy, lr, duration_s,
                     samples_per_s, created_at)
    VALUES (1, 1, 0.5, 0.9, 0.4, 0.9, 0.001, 1.0, 100.0, '2026-11-26 10:00:01');
INSERT INTO checkpoints (experiment_id, epoch, data, sha256, size_bytes, created_at)
    VALUES (1, 1, :blob, 'x', 1, '2026-11-26 10:00:01');
"""
STORED = {"experiments": 2, "sweeps": 1, "metrics": 1, "checkpoints": 1}


def test_upgrades_and_downgrades_keep_every_stored_row(tmp_path: Path, db_url: str) -> None:
    """On SQLite, batch mode recreates a table to alter it; with foreign keys on, dropping the old `experiments`
    used to delete every metric and checkpoint (ON DELETE CASCADE) on the way from 0002 to 0003."""
    env = make_env(tmp_path, db_url)

    def alembic(*step: str) -> None:
        result = subprocess.run([sys.executable, "-m", "alembic", *step], cwd=REPO, env=env, capture_output=True)
        assert result.returncode == 0, result.stderr

    def counts() -> dict[str, int]:
        engine = create_engine(db_url)
        with engine.connect() as conn:
            found = {t: conn.scalar(text(f"SELECT count(*) FROM {t}")) for t in STORED}
        engine.dispose()
        return found

    alembic("upgrade", "0002")
    engine = create_engine(db_url)
    with engine.begin() as conn:
        for statement in SEED_0002.split(";")[:-1]:
            conn.execute(text(statement), {"blob": b"x"} if ":blob" in statement else {})
    engine.dispose()
    for step in (["upgrade", "head"], ["downgrade", "0002"], ["upgrade", "head"]):
        alembic(*step)
        assert counts() == STORED, step
    alembic("downgrade", "base")
    alembic("upgrade", "head")


def start_api_and_worker(env: dict[str, str]) -> tuple[subprocess.CompletedProcess, subprocess.CompletedProcess]:
    """Both processes started at once (their imports overlap), each run until it exits."""
    commands = (
        [sys.executable, "-m", "uvicorn", "--factory", "service.app:create_app", "--port", str(free_port())],
        [sys.executable, "-m", "worker"],
    )
    processes = [
        subprocess.Popen(c, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for c in commands
    ]
    results = []
    try:
        for command, process in zip(commands, processes, strict=True):
            stdout, stderr = process.communicate(timeout=120)
            results.append(subprocess.CompletedProcess(command, process.returncode, stdout, stderr))
    finally:  # one that did not refuse (it hung or serves) is stopped, not left running after the test
        for process in processes:
            if process.poll() is None:
                process.kill()
                process.wait()
    return results[0], results[1]


def test_api_and_worker_refuse_a_database_that_is_behind(tmp_path: Path, db_url: str) -> None:
    api, worker = start_api_and_worker(make_env(tmp_path, db_url))
    assert api.returncode != 0
    assert "alembic upgrade head" in api.stderr
    assert worker.returncode == 2
    assert "refusing to start" in worker.stderr and "alembic upgrade head" in worker.stderr


def test_api_and_worker_refuse_to_load_checkpoints_with_full_pickle(tmp_path: Path, db_url: str) -> None:
    env = {**make_env(tmp_path, migrated(db_url)), "TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD": "1"}
    api, worker = start_api_and_worker(env)
    assert api.returncode != 0 and "TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD is set" in api.stderr
    assert worker.returncode == 2 and "TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD is set" in worker.stderr
