"""Real components: a migrated database, a real uvicorn server and real `python -m worker` processes.

Every test that touches a database runs twice: on a SQLite file and on a fresh database of the PostgreSQL server
named by TRAINLAB_TEST_POSTGRES_URL (`.ci/postgres.sh` starts one); without that variable the PostgreSQL half is
skipped, and says so.
"""

from __future__ import annotations

import io
import os
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import httpx
import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from service.settings import Settings
from service.specs import DatasetSpec, EpochMetrics, ExperimentSpec
from service.store import Store

# One torch thread in every process of the tests (pytest's, APIs', workers'): two tests at once (`make test` runs
# `pytest -n 2`) each run a few processes on two cores, and torch's default of a thread per core then
# oversubscribes them: the training tests ran 2-6 times slower, and the suite's CPU time rose 67% (measured).
os.environ.setdefault("OMP_NUM_THREADS", "1")

if TYPE_CHECKING:
    from worker.datasets import Dataset

REPO = Path(__file__).resolve().parent.parent
# Where tests that train in-process let the engine keep its decoded-tensor cache: shared by runs, never the repository.
SCRATCH_DATA_DIR = Path(tempfile.gettempdir()) / "trainlab-tests-data"


def load_bundled(spec: DatasetSpec) -> Dataset:
    """A bundled dataset (no files needed) for training in this process."""
    from worker.datasets import load_dataset

    return load_dataset(spec, SCRATCH_DATA_DIR)


def fit_bundled(experiment: ExperimentSpec, **kwargs) -> list[tuple[EpochMetrics, bytes]]:
    """Train `experiment` on its bundled dataset in this process, on the CPU: each epoch's metrics and checkpoint."""
    import torch

    from worker.engine import fit

    out: list[tuple[EpochMetrics, bytes]] = []
    fit(experiment, load_bundled(experiment.dataset), torch.device("cpu"),
        on_epoch=lambda m, c: out.append((m, c)), **kwargs)  # fmt: skip
    return out


def timing_free(m: EpochMetrics) -> dict:
    """An epoch's metrics without its timings, to compare runs by."""
    return m.model_dump(exclude={"duration_s", "samples_per_s"})


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Deployment:
    """One database, the environment every process of this deployment gets, and the processes started."""

    root: Path
    db_url: str
    env: dict[str, str]
    processes: list[tuple[subprocess.Popen, Path]] = field(default_factory=list)
    url: str | None = None

    def spawn(self, name: str, *args: str) -> subprocess.Popen:
        log = self.root / f"{name}-{len(self.processes)}.log"
        process = subprocess.Popen(
            [sys.executable, *args], cwd=REPO, env=self.env, stdout=log.open("wb"), stderr=subprocess.STDOUT
        )
        self.processes.append((process, log))
        return process

    def spawn_api(self) -> subprocess.Popen:
        port = free_port()
        self.url = f"http://127.0.0.1:{port}"
        return self.spawn("api", "-m", "uvicorn", "--factory", "service.app:create_app", "--port", str(port))

    def wait_for_api(self, process: subprocess.Popen) -> str:
        """Wait until `process` has bound its port and answers. Tests run two at a time: until it binds, the port
        free_port() found may be taken by another test's API, whose /healthz must not be mistaken for ours."""
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            log = next(log for p, log in self.processes if p is process).read_text(errors="replace")
            if process.poll() is not None:
                if "address already in use" not in log:
                    raise RuntimeError(f"API exited with {process.returncode}:\n{self.logs()}")
                process = self.spawn_api()  # on another port
            elif f"Uvicorn running on {self.url}" in log:
                try:
                    if httpx.get(f"{self.url}/healthz", timeout=5).status_code == 200:
                        return self.url
                except httpx.TransportError:
                    pass
            time.sleep(0.2)
        raise RuntimeError(f"API did not come up:\n{self.logs()}")

    def start_worker(self) -> subprocess.Popen:
        return self.spawn("worker", "-m", "worker")

    def workers(self) -> list[subprocess.Popen]:
        """The worker processes started so far, oldest first."""
        return [process for process, log in self.processes if log.name.startswith("worker")]

    def logs(self, name: str = "") -> str:
        return "\n".join(
            f"--- {log.name}\n{log.read_text(errors='replace')}" for _, log in self.processes if log.name.startswith(name)
        )

    def stop(self) -> None:
        for process, _ in self.processes:
            if process.poll() is None:
                process.terminate()
        for process, _ in self.processes:
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def make_env(root: Path, db_url: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TRAINLAB_")}
    env.update(
        TRAINLAB_DATABASE_URL=db_url,
        TRAINLAB_DATA_DIR=str(root / "data"),
        TRAINLAB_RUNS_DIR=str(root / "runs"),
        TRAINLAB_POLL_INTERVAL_S="0.2",
        PYTHONUNBUFFERED="1",
    )
    return env


BACKENDS = ["sqlite", "postgresql"]


@contextmanager
def new_database(backend: str, root: Path) -> Iterator[str]:
    """An empty database of `backend`, dropped afterwards."""
    if backend == "sqlite":
        yield f"sqlite:///{root / 'trainlab.db'}"
        return
    admin_url = os.environ.get("TRAINLAB_TEST_POSTGRES_URL")
    if not admin_url:
        pytest.skip("PostgreSQL not tested: set TRAINLAB_TEST_POSTGRES_URL (bash .ci/postgres.sh starts a server)")
    name = f"trainlab_test_{uuid.uuid4().hex[:12]}"
    admin = create_engine(admin_url, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}"'))
        yield make_url(admin_url).set(database=name).render_as_string(hide_password=False)
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    finally:
        admin.dispose()


@contextmanager
def database_outage(db_url: str) -> Iterator[None]:
    """No connection to the PostgreSQL database `db_url` for the block: new ones refused, open ones dropped, as when
    its server restarts."""
    name = make_url(db_url).database
    admin = create_engine(os.environ["TRAINLAB_TEST_POSTGRES_URL"], isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.execute(text(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS false'))
            conn.execute(text("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = :name"),
                         {"name": name})  # fmt: skip
        yield
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS true'))
        admin.dispose()


@pytest.fixture(params=BACKENDS)
def db_url(request, tmp_path: Path) -> Iterator[str]:
    """An empty database: a SQLite file, then a PostgreSQL database."""
    with new_database(request.param, tmp_path) as url:
        yield url


@pytest.fixture(scope="module", params=BACKENDS)
def module_db_url(request, tmp_path_factory) -> Iterator[str]:
    with new_database(request.param, tmp_path_factory.mktemp("db")) as url:
        yield url


def migrated(db_url: str) -> str:
    store = Store(db_url)
    store.upgrade()
    store.close()
    return db_url


@contextmanager
def deployment(root: Path, db_url: str, *, workers: int = 0, api: bool = True, **env: str) -> Iterator[Deployment]:
    """API and workers on a migrated `db_url`; `env` adds TRAINLAB_* settings, e.g. TRAINLAB_LEASE_S="3"."""
    migrated(db_url)
    dep = Deployment(root=root, db_url=db_url, env={**make_env(root, db_url), **env})
    try:
        api_process = dep.spawn_api() if api else None
        for _ in range(workers):  # while the API starts: on two cores, the two imports overlap
            dep.start_worker()
        if api_process is not None:
            dep.wait_for_api(api_process)
        yield dep
    finally:
        dep.stop()


@pytest.fixture
def api_only(tmp_path: Path, db_url: str) -> Iterator[Deployment]:
    with deployment(tmp_path, db_url) as dep:
        yield dep


@pytest.fixture
def client_for():
    clients: list[httpx.Client] = []

    def make(dep: Deployment) -> httpx.Client:
        clients.append(httpx.Client(base_url=dep.url, timeout=30))
        return clients[-1]

    yield make
    for client in clients:
        client.close()


def wait_for_status(client: httpx.Client, experiment_id: int, statuses: set[str], timeout: float = 300) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        experiment = client.get(f"/experiments/{experiment_id}").json()
        if experiment["status"] in statuses:
            return experiment
        time.sleep(0.3)
    raise AssertionError(f"experiment {experiment_id} still {experiment['status']} after {timeout}s")


def malicious_checkpoint(sentinel: Path) -> bytes:
    """A torch.save file whose unpickling would create `sentinel`: what a full-pickle load would run."""
    import torch

    class Exploit:
        def __reduce__(self):
            return (Path.touch, (sentinel,))

    buffer = io.BytesIO()
    torch.save({"format": 1, "payload": Exploit()}, buffer)
    return buffer.getvalue()


def tiny_spec(**overrides) -> dict:
    """A job that trains in about a second: an MLP on the 8x8 digits."""
    spec = {"name": "tiny", "dataset": {"name": "digits"}, "model": {"kind": "mlp", "hidden": [32]}, "epochs": 2}
    spec.update(overrides)
    return spec


def train_in_process(dep: Deployment) -> None:
    """Claim and train the oldest queued job through the worker's own code, without a worker process."""
    from worker.loop import Worker

    store = Store(dep.db_url)
    settings = Settings(data_dir=dep.root / "data", runs_dir=dep.root / "runs", database_url=dep.db_url)
    try:
        job = store.claim("test-worker", lease_s=settings.lease_s, max_attempts=settings.max_attempts)
        assert job is not None, "nothing queued"
        Worker(store, settings, worker_id="test-worker").run_job(job)
    finally:
        store.close()


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item, call):
    """Keep each phase's report on the test item (`item.rep_call`): fixtures read it to act on failures."""
    report = yield
    setattr(item, f"rep_{report.when}", report)
    return report


def run_cli(*args: str, url: str, cwd: Path, stdin: str = "") -> subprocess.CompletedProcess:
    """The `trainlab` command against the API at `url`, as a user runs it. Captured, as in a pipe: rows stay one
    line however long (no COLUMNS: not the terminal's width)."""
    env = {**{k: v for k, v in os.environ.items() if k != "COLUMNS"}, "TRAINLAB_URL": url}
    return subprocess.run(
        [sys.executable, "-m", "service.cli", *args],
        cwd=cwd, env=env, input=stdin, capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
