"""Head-only transfer learning: a frozen backbone's features computed once (the engine) vs the backbone run over
every image every epoch (`fit(feature_cache=False)`, the engine before), same spec and seed, rounds alternated.

    python -m bench.frozen_features [--device auto|cpu|cuda] [--rounds 3] [--epochs 4] [--image-size 64]

ResNet18 with `freeze: backbone` from random weights (no weight file needed: what is measured is time, and that
both paths train the same head) on the bundled `digits` (1,438 training, 359 validation images), which the model
resizes to `--image-size`; batch 64, no augmentation, the worker's allocator. Prints each path's median seconds for
the first epoch and for each later one, the whole run, and the final validation accuracy of each.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from bench.common import header, median
from service.specs import EpochMetrics, ExperimentSpec
from worker.allocator import keep_freed_memory
from worker.datasets import load_dataset
from worker.engine import fit, resolve_device


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--image-size", type=int, default=64)
    args = parser.parse_args()
    keep_freed_memory()  # as the worker process does
    device = resolve_device(args.device)
    header(device, "frozen_features: a frozen backbone's features once vs the backbone every epoch")
    spec = ExperimentSpec.model_validate({
        "dataset": {"name": "digits"}, "epochs": args.epochs, "batch_size": 64, "device": args.device,
        "model": {"kind": "resnet18", "pretrained": "none", "freeze": "backbone", "image_size": args.image_size},
    })  # fmt: skip
    dataset = load_dataset(spec.dataset, Path("var/data"))
    print(f"# resnet18 at {args.image_size} px, digits, {args.epochs} epochs, batch 64, {args.rounds} rounds")

    def run(cache: bool) -> tuple[list[EpochMetrics], float]:
        rows: list[EpochMetrics] = []
        started = time.perf_counter()
        fit(spec, dataset, device, on_epoch=lambda m, _: rows.append(m), feature_cache=cache)
        return rows, time.perf_counter() - started

    runs: dict[bool, list[tuple[list[EpochMetrics], float]]] = {True: [], False: []}
    for round_ in range(args.rounds):
        for cache in (False, True) if round_ % 2 == 0 else (True, False):
            runs[cache].append(run(cache))

    def figures(cache: bool) -> tuple[float, float, float, float]:
        first = median(rows[0].duration_s for rows, _ in runs[cache])
        later = median(m.duration_s for rows, _ in runs[cache] for m in rows[1:])
        return first, later, median(total for _, total in runs[cache]), runs[cache][-1][0][-1].val_accuracy

    print(f"{'':28}{'epoch 1 s':>11}{'later s/epoch':>15}{'run s':>9}{'val acc':>9}")
    for cache, label in ((False, "backbone every epoch"), (True, "features once (engine)")):
        first, later, total, accuracy = figures(cache)
        print(f"{label:28}{first:11.3f}{later:15.4f}{total:9.2f}{accuracy:9.4f}")
    (_, every, every_run, _), (_, once, once_run, _) = figures(False), figures(True)
    print(f"# later epochs {every / once:.0f}x faster, the run {every_run / once_run:.2f}x")


if __name__ == "__main__":
    main()
