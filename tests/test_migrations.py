"""Alembic owns the schema on SQLite and PostgreSQL; API and worker refuse a database behind it, or an unsafe torch."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext

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


def test_downgrade_and_upgrade_again(tmp_path: Path, db_url: str) -> None:
    env = make_env(tmp_path, db_url)
    for step in (["upgrade", "head"], ["downgrade", "base"], ["upgrade", "head"]):
        result = subprocess.run([sys.executable, "-m", "alembic", *step], cwd=REPO, env=env, capture_output=True)
        assert result.returncode == 0, result.stderr


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
