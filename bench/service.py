"""A throwaway deployment for the service benchmarks: a migrated SQLite file, the API, and workers."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx

from bench.common import REPO
from service.store import Store


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def running_service(root: Path, *, workers: int) -> Iterator[tuple[str, Store, list[subprocess.Popen]]]:
    """(API base URL, the store, [api, worker, ...] processes); everything stopped afterwards."""
    url = f"sqlite:///{root / 'bench.db'}"
    store = Store(url)
    store.upgrade()
    env = {**os.environ, "TRAINLAB_DATABASE_URL": url, "TRAINLAB_DATA_DIR": str(root / "data"),
           "TRAINLAB_RUNS_DIR": str(root / "runs"), "TRAINLAB_POLL_INTERVAL_S": "0.1"}  # fmt: skip
    port = free_port()
    logs = (root / "service.log").open("wb")
    processes = [
        subprocess.Popen(
            [sys.executable, "-m", "uvicorn", "--factory", "service.app:create_app", "--port", str(port),
             "--log-level", "warning"],
            cwd=REPO, env=env, stdout=logs, stderr=subprocess.STDOUT,
        )  # fmt: skip
    ]
    processes += [
        subprocess.Popen([sys.executable, "-m", "worker"], cwd=REPO, env=env, stdout=logs, stderr=subprocess.STDOUT)
        for _ in range(workers)
    ]
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                httpx.get(f"{base}/healthz", timeout=1).raise_for_status()
                break
            except httpx.HTTPError:
                if time.monotonic() > deadline:
                    raise RuntimeError((root / "service.log").read_text()) from None
                time.sleep(0.2)
        yield base, store, processes
    finally:
        for process in processes:
            process.terminate()
        for process in processes:
            process.wait(timeout=60)
        store.close()
