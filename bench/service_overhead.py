"""One experiment through the whole service (API + worker + SQLite + checkpoints) vs the bare engine in-process.

    python -m bench.service_overhead [--epochs 4] [--rounds 2]

Per-epoch wall time: for the service, the time between consecutive epochs' metrics rows being committed (so it
includes the checkpoint write, the database transaction and the lease thread); for the bare engine, the time
between consecutive `on_epoch` calls of `fit`. The first epoch is left out of both (its start differs). Bare and
service runs alternate; medians. Also the worker's peak RSS while training.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import httpx
import torch
from sqlalchemy import select

from bench.common import REPO, header, median, peak_rss_mb
from bench.service import running_service
from service.specs import ExperimentSpec
from service.store import MetricRow
from worker.allocator import keep_freed_memory
from worker.datasets import load_dataset
from worker.engine import fit


def bare(spec: ExperimentSpec) -> list[float]:
    stamps: list[float] = []
    fit(spec, load_dataset(spec.dataset, Path("var/data")), torch.device("cpu"),
        on_epoch=lambda m, c: stamps.append(time.perf_counter()))  # fmt: skip
    return [b - a for a, b in zip(stamps, stamps[1:], strict=False)]


def through_service(spec: ExperimentSpec) -> tuple[list[float], float]:
    with tempfile.TemporaryDirectory() as root, running_service(Path(root), workers=1) as (url, store, processes):
        with httpx.Client(base_url=url, timeout=30) as client:
            experiment_id = client.post("/experiments", json=spec.model_dump(mode="json")).json()["id"]
            while (status := client.get(f"/experiments/{experiment_id}").json()["status"]) in ("queued", "running"):
                time.sleep(1.0)  # a patient client: the benchmark should not load the cores it measures
            assert status == "succeeded", status
        rss = peak_rss_mb(processes[1].pid)
        with store.engine.connect() as conn:
            stamps = conn.scalars(
                select(MetricRow.created_at).where(MetricRow.experiment_id == experiment_id).order_by(MetricRow.epoch)
            ).all()
    return [(b - a).total_seconds() for a, b in zip(stamps, stamps[1:], strict=False)], rss


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    keep_freed_memory()  # as the worker process does
    header(torch.device("cpu"), "service_overhead: whole service vs bare engine, per-epoch wall time")
    recipe = json.loads((REPO / "examples" / "mnist-cnn.json").read_text())
    spec = ExperimentSpec.model_validate({**recipe, "epochs": args.epochs, "device": "cpu"})
    print(
        f"# {spec.model.kind} on {spec.dataset.name}, {args.epochs} epochs, batch {spec.batch_size}, "
        f"{args.rounds} rounds"
    )
    bare_s, service_s, rss = [], [], []
    for _ in range(args.rounds):
        bare_s += bare(spec)
        epochs, peak = through_service(spec)
        service_s += epochs
        rss.append(peak)
    b, s = median(bare_s), median(service_s)
    print(f"{'bare s/epoch':>13} {'service s/epoch':>16} {'overhead':>9} {'worker peak RSS MB':>19}")
    print(f"{b:>13.3f} {s:>16.3f} {100 * (s / b - 1):>8.1f}% {max(rss):>19.0f}")


if __name__ == "__main__":
    main()
