"""One experiment through the whole service (API + worker + SQLite + checkpoints) vs the bare engine in-process.

    python -m bench.service_overhead [--epochs 4] [--rounds 4] [--in-process-rounds 3]

Per-epoch wall time: for the service, the time between consecutive epochs' metrics rows being committed (so it
includes the checkpoint write, the database transaction and the lease thread); for the bare engine, the time
between consecutive `on_epoch` calls of `fit`, in a fresh process each round as the worker is; in between, the
worker's job code alone (no API, no separate worker process) measured like the service. The first epoch is
left out of both (its start differs). Bare and service runs alternate; medians, then each round's own
comparison. Also the worker's peak RSS while training. Last, bare `fit` and the worker's job code alternated in
one process (`--in-process-rounds`): fresh processes of the same bare fit differ by ±10% here, more than the
target, and one process takes that spread out of the comparison.
"""

from __future__ import annotations

import argparse
import itertools
import json
import multiprocessing
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TypeVar

import httpx
import torch
from sqlalchemy import select

from bench.common import REPO, header, median, peak_rss_mb
from bench.service import running_service
from service.settings import Settings
from service.specs import ExperimentSpec
from service.store import MetricRow, Store
from worker.allocator import keep_freed_memory
from worker.datasets import Dataset, load_dataset
from worker.engine import fit
from worker.loop import Worker

DATA_DIR = Path("var/data")
T = TypeVar("T")


def bare(spec_json: dict) -> list[float]:
    """In a fresh process, as the worker trains: five fresh processes running this same bare fit trained at
    5,600-7,000 samples/s here, so one long-lived bare process against a new worker each round measured that
    spread as much as the service."""
    keep_freed_memory()  # as the worker process does
    spec = ExperimentSpec.model_validate(spec_json)
    return _bare_intervals(spec, load_dataset(spec.dataset, DATA_DIR))


def _bare_intervals(spec: ExperimentSpec, dataset: Dataset) -> list[float]:
    stamps: list[float] = []
    fit(spec, dataset, torch.device("cpu"), on_epoch=lambda m, c: stamps.append(time.perf_counter()))
    return [b - a for a, b in itertools.pairwise(stamps)]


def epoch_intervals(store: Store, experiment_id: int) -> list[float]:
    """Seconds between consecutive epochs' metrics rows being committed."""
    with store.engine.connect() as conn:
        stamps = conn.scalars(
            select(MetricRow.created_at).where(MetricRow.experiment_id == experiment_id).order_by(MetricRow.epoch)
        ).all()
    return [(b - a).total_seconds() for a, b in itertools.pairwise(stamps)]


def worker_code(spec_json: dict) -> list[float]:
    """The worker's own job code (claim, lease thread, progress and epoch writes, TensorBoard) on SQLite, in a
    fresh process but with no API and no worker process around it: what the service's machinery costs."""
    keep_freed_memory()
    with tempfile.TemporaryDirectory() as root, _sqlite_store(Path(root)) as store:
        return _job_intervals(ExperimentSpec.model_validate(spec_json), store, Path(root))


def in_one_process(spec_json: dict, rounds: int) -> tuple[list[float], list[float]]:
    """Bare `fit` and the worker's job code alternated in one fresh process, on the same loaded dataset: the
    machinery's cost without the spread between processes (bare intervals, job code intervals)."""
    keep_freed_memory()
    spec = ExperimentSpec.model_validate(spec_json)
    dataset = load_dataset(spec.dataset, DATA_DIR)
    bare_s: list[float] = []
    code_s: list[float] = []
    with tempfile.TemporaryDirectory() as root, _sqlite_store(Path(root)) as store:
        for _ in range(rounds):
            bare_s += _bare_intervals(spec, dataset)
            code_s += _job_intervals(spec, store, Path(root))
    return bare_s, code_s


@contextmanager
def _sqlite_store(root: Path) -> Iterator[Store]:
    store = Store(f"sqlite:///{root}/bench.db")
    store.upgrade()
    try:
        yield store
    finally:
        store.close()


def _job_intervals(spec: ExperimentSpec, store: Store, root: Path) -> list[float]:
    experiment, _ = store.create_experiment(spec)
    settings = Settings(database_url=store.url, data_dir=DATA_DIR, runs_dir=root / "runs")
    job = store.claim("bench", lease_s=settings.lease_s, max_attempts=1)
    Worker(store, settings, worker_id="bench").run_job(job)
    return epoch_intervals(store, experiment.id)


def in_new_process(function: Callable[..., T], spec: ExperimentSpec, *args: object) -> T:
    with multiprocessing.get_context("spawn").Pool(1) as pool:
        return pool.apply(function, (spec.model_dump(mode="json"), *args))


def through_service(spec: ExperimentSpec) -> tuple[list[float], float]:
    with tempfile.TemporaryDirectory() as root, running_service(Path(root), workers=1) as (url, store, processes):
        with httpx.Client(base_url=url, timeout=30) as client:
            experiment_id = client.post("/experiments", json=spec.model_dump(mode="json")).json()["id"]
            while (status := client.get(f"/experiments/{experiment_id}").json()["status"]) in ("queued", "running"):
                time.sleep(1.0)  # a patient client: the benchmark should not load the cores it measures
            assert status == "succeeded", status
        return epoch_intervals(store, experiment_id), peak_rss_mb(processes[1].pid)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--in-process-rounds", type=int, default=3, help="bare/job code pairs in one process")
    args = parser.parse_args()
    header(torch.device("cpu"), "service_overhead: whole service vs bare engine, per-epoch wall time")
    recipe = json.loads((REPO / "examples" / "mnist-cnn.json").read_text())
    spec = ExperimentSpec.model_validate({**recipe, "epochs": args.epochs, "device": "cpu"})
    print(
        f"# {spec.model.kind} on {spec.dataset.name}, {args.epochs} epochs, batch {spec.batch_size}, "
        f"{args.rounds} rounds"
    )
    bare_s, code_s, service_s, rss = [], [], [], []
    for _ in range(args.rounds):
        bare_s.append(in_new_process(bare, spec))
        code_s.append(in_new_process(worker_code, spec))
        epochs, peak = through_service(spec)
        service_s.append(epochs)
        rss.append(peak)
    b, c, s = (median([x for one in runs for x in one]) for runs in (bare_s, code_s, service_s))
    print(f"{'bare s/epoch':>13} {'worker code':>12} {'service s/epoch':>16} {'code':>7} {'service':>8} "
          f"{'worker peak RSS MB':>19}")  # fmt: skip
    print(f"{b:>13.3f} {c:>12.3f} {s:>16.3f} {100 * (c / b - 1):>6.1f}% {100 * (s / b - 1):>7.1f}% {max(rss):>19.0f}")
    # Each process trains at its own speed (fresh processes of the same bare fit: 5,600-7,000 samples/s here), so
    # the rounds show how far one round's comparison can stray from the medians above.
    paired = [100 * (median(srv) / median(bar) - 1) for bar, srv in zip(bare_s, service_s, strict=True)]
    print("# service vs bare, round by round: " + ", ".join(f"{x:+.1f}%" for x in paired))
    print(f"# bare s/epoch by round: {', '.join(f'{median(x):.3f}' for x in bare_s)}")
    if args.in_process_rounds:
        one_bare, one_code = in_new_process(in_one_process, spec, args.in_process_rounds)
        b, c = median(one_bare), median(one_code)
        print(f"# in one process, {args.in_process_rounds} alternating rounds: bare {b:.3f} s/epoch, "
              f"worker's job code {c:.3f} ({100 * (c / b - 1):+.1f}%)")  # fmt: skip


if __name__ == "__main__":
    main()
