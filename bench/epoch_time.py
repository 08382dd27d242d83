"""Epoch time and throughput of the worker's engine on mnist-10k, per model, on this machine's device.

    python bench/epoch_time.py [--device auto|cpu|cuda] [--epochs 3]

Prints the machine, torch version and device, then per model the median epoch time, samples/s and final
validation accuracy. The first epoch is reported apart (warm-up: allocator, cuDNN autotuning).
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from service.specs import EpochMetrics, ExperimentSpec  # noqa: E402
from worker.datasets import load_dataset  # noqa: E402
from worker.engine import fit, resolve_device  # noqa: E402

MODELS = {"mlp": {"kind": "mlp"}, "cnn": {"kind": "cnn"}}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=64)
    args = parser.parse_args()
    device = resolve_device(args.device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu"
    print(f"# {platform.node()} | python {platform.python_version()} | torch {torch.__version__} | {device} ({name})")
    print(f"# threads {torch.get_num_threads()} | mnist-10k 8000 train / 2000 val | batch {args.batch_size}")
    print(f"{'model':<6} {'first epoch s':>14} {'median epoch s':>15} {'samples/s':>10} {'val acc':>8}")
    for model_name, model in MODELS.items():
        spec = ExperimentSpec.model_validate(
            {"dataset": {"name": "mnist-10k"}, "model": model, "epochs": args.epochs, "batch_size": args.batch_size}
        )
        rows: list[EpochMetrics] = []
        fit(spec, load_dataset(spec.dataset, Path("var/data")), device, on_epoch=lambda m, _: rows.append(m))
        steady = rows[1:] or rows
        print(
            f"{model_name:<6} {rows[0].duration_s:>14.2f} {statistics.median(m.duration_s for m in steady):>15.2f} "
            f"{statistics.median(m.samples_per_s for m in steady):>10.0f} {rows[-1].val_accuracy:>8.4f}"
        )


if __name__ == "__main__":
    main()
