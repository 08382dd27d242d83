"""Wall seconds for the default CNN recipe to reach 98% validation accuracy on mnist-10k.

    python -m bench.time_to_accuracy [--device auto|cpu|cuda] [--target 0.98] [--runs 3]

The recipe is examples/mnist-cnn.json (CNN 32-64, fc 128, Adam, batch 64) with up to `--max-epochs` epochs.
The clock runs from the call to `fit` (dataset decoded and warm, as in a worker that has trained before) to the
end of the first epoch whose validation accuracy reaches the target; evaluation and checkpointing included.
On CUDA one untimed run warms up the kernels first.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from bench.common import REPO, header, median
from service.specs import ExperimentSpec
from worker.allocator import keep_freed_memory
from worker.datasets import load_dataset
from worker.engine import fit, resolve_device


class Reached(Exception):
    pass


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    parser.add_argument("--target", type=float, default=0.98)
    parser.add_argument("--max-epochs", type=int, default=20)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16", "fp16"])
    parser.add_argument("--no-cuda-graphs", dest="cuda_graphs", action="store_false", help="eager steps on CUDA")
    args = parser.parse_args()
    keep_freed_memory()  # as the worker process does
    device = resolve_device(args.device)
    header(device, f"time_to_accuracy: examples/mnist-cnn.json to {args.target:.0%} validation accuracy")
    recipe = json.loads((REPO / "examples" / "mnist-cnn.json").read_text())
    recipe.update(epochs=args.max_epochs, device=args.device, precision=args.precision)
    spec = ExperimentSpec.model_validate(recipe)
    dataset = load_dataset(spec.dataset, Path("var/data"))
    if device.type == "cuda":
        fit(spec.model_copy(update={"epochs": 1}), dataset, device, on_epoch=lambda m, c: None,
            cuda_graphs=args.cuda_graphs)  # fmt: skip

    def run() -> tuple[float, int, float]:
        started = time.perf_counter()

        def on_epoch(metrics, _checkpoint: bytes) -> None:
            if metrics.val_accuracy >= args.target:
                raise Reached((time.perf_counter() - started, metrics.epoch, metrics.val_accuracy))

        try:
            fit(spec, dataset, device, on_epoch=on_epoch, cuda_graphs=args.cuda_graphs)
        except Reached as reached:
            return reached.args[0]
        return float("inf"), args.max_epochs, float("nan")

    results = [run() for _ in range(args.runs)]
    for seconds, epoch, accuracy in results:
        print(f"run: {seconds:.2f} s, epoch {epoch}, val acc {accuracy:.4f}")
    graphs = ", CUDA graphs " + ("on" if args.cuda_graphs else "off") if device.type == "cuda" else ""
    print(f"median: {median(r[0] for r in results):.2f} s to {args.target:.0%} ({spec.precision} precision{graphs})")


if __name__ == "__main__":
    main()
