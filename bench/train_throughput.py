"""The classic tutorial loop vs the worker's engine: same model, batch size, epochs and seed.

Classic: a Dataset that turns each uint8 image into a PIL image and back (`ToTensor` + `Normalize`), exactly as
torchvision's MNIST does per item, a `DataLoader` (batch 64, shuffle, num_workers=0), `.to(device)` per batch, fp32
eager, in a fresh Python process as a user's script runs (glibc's default malloc settings). Engine:
`worker.engine.fit`, as the worker runs it (malloc tuned by `worker.allocator`), in fp32 and with
`precision: auto`. The classic loop is also run in the tuned process, to show what the allocator alone gives it.

    python -m bench.train_throughput [--device auto|cpu|cuda] [--epochs 3] [--rounds 3] [--full] [--compile]

The four variants run alternately, `--rounds` times, round r with seed r for all of them; samples/s is the median
over every epoch of every round (training only, evaluation excluded, for all four), accuracy the median final
validation accuracy over the seeds, each seed's printed below it.
`--full` adds the full Fashion-MNIST (54k training images) when its files are present; `--compile` a fifth
variant, the engine with `compile: true`, whose compile seconds are printed apart from its samples/s. On CUDA,
the engine also runs with its CUDA graphs off (`fit(cuda_graphs=False)`), to show what they give.
"""

from __future__ import annotations

import argparse
import functools
import multiprocessing
import multiprocessing.pool
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from PIL import Image
from torch.utils.data import DataLoader
from torchvision import transforms

from bench.common import header, median
from service.specs import ExperimentSpec
from worker.allocator import keep_freed_memory
from worker.datasets import Dataset, DatasetUnavailable, Split, load_dataset
from worker.engine import fit, resolve_device
from worker.models import create_model

MODELS = {"mlp": {"kind": "mlp"}, "cnn": {"kind": "cnn"}}


class ClassicImages(torch.utils.data.Dataset):
    """torchvision.datasets.MNIST's __getitem__: a PIL image per item, then the transform."""

    def __init__(self, split: Split, transform) -> None:
        self.images, self.labels, self.transform = split.images.numpy(), split.labels.tolist(), transform

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int):
        return self.transform(Image.fromarray(self.images[i, 0], mode="L")), self.labels[i]


def classic(spec: ExperimentSpec, dataset: Dataset, device: torch.device) -> tuple[list[float], float]:
    """Samples/s of each epoch and the final validation accuracy of the textbook loop."""
    p = dataset.info.preprocess
    transform = transforms.Compose([transforms.ToTensor(), transforms.Normalize(p.mean, p.std)])
    torch.manual_seed(spec.seed)
    model = create_model(spec.model, p.input_shape, dataset.info.num_classes).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=spec.optimizer.lr)
    # Shuffled from the global generator, as pytorch/examples' mnist does. A DataLoader generator seeded with the
    # init's seed draws the same random numbers as the init did, so the sample order follows the initial weights:
    # that cost the MLP 0.45 pp of accuracy on average over 20 seeds (docs/PERFORMANCE.md).
    train = DataLoader(ClassicImages(dataset.train, transform), batch_size=spec.batch_size, shuffle=True, num_workers=0)
    rates = []
    for _ in range(spec.epochs):
        model.train()
        started = time.perf_counter()
        for x, y in train:
            x, y = x.to(device), y.to(device)
            loss = F.cross_entropy(model(x), y)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        rates.append(len(dataset.train) / (time.perf_counter() - started))
    model.eval()
    correct = 0
    with torch.no_grad():
        for x, y in DataLoader(ClassicImages(dataset.val, transform), batch_size=1000):
            correct += (model(x.to(device)).argmax(1).cpu() == y).sum().item()
    return rates, correct / len(dataset.val)


def engine(
    spec: ExperimentSpec,
    dataset: Dataset,
    device: torch.device,
    compile_s: list[float] | None = None,
    cuda_graphs: bool = True,
) -> tuple[list[float], float]:
    """Samples/s of each epoch and the final validation accuracy; with `compile: true`, appends the compile
    seconds (timed apart by the engine) to `compile_s`."""
    rows = []
    fit(spec, dataset, device, on_epoch=lambda m, _: rows.append(m), cuda_graphs=cuda_graphs)
    if compile_s is not None:
        compile_s.append(rows[0].compile_s)
    return [m.samples_per_s for m in rows], rows[-1].val_accuracy


@functools.cache
def load(name: str) -> Dataset:
    return load_dataset(ExperimentSpec.model_validate({"dataset": {"name": name}, "model": {"kind": "mlp"}}).dataset,
                        Path("var/data"))  # fmt: skip


def classic_by_name(spec: dict, device: str) -> tuple[list[float], float]:
    """`classic` in the untuned child process (arguments it can unpickle)."""
    parsed = ExperimentSpec.model_validate(spec)
    return classic(parsed, load(parsed.dataset.name), torch.device(device))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--full", action="store_true", help="also the full Fashion-MNIST, when present")
    parser.add_argument("--compile", action="store_true", help="also the engine with `compile: true` (auto)")
    args = parser.parse_args()
    device = resolve_device(args.device)
    # Spawned before this process tunes its allocator: the classic loop as a plain script runs.
    with multiprocessing.get_context("spawn").Pool(1) as untuned:
        keep_freed_memory()
        compare(args, device, untuned)


def variants(
    fp32: ExperimentSpec,
    dataset: Dataset,
    device: torch.device,
    untuned: multiprocessing.pool.Pool,
    compile_s: list[float] | None,
) -> dict[str, Callable[[], tuple[list[float], float]]]:
    """What one round runs, in this order: each variant's samples/s per epoch and final validation accuracy. With
    `compile_s`, also the engine with `compile: true`, whose compile seconds go there."""
    auto = fp32.model_copy(update={"precision": "auto"})
    runs: dict[str, Callable[[], tuple[list[float], float]]] = {
        "classic": lambda: untuned.apply(classic_by_name, (fp32.model_dump(mode="json"), str(device))),
        "classic*": lambda: classic(fp32, dataset, device),
        "fp32": lambda: engine(fp32, dataset, device),
        "auto": lambda: engine(auto, dataset, device),
    }
    if device.type == "cuda":  # what CUDA graphs of the training step give
        runs["fp32 eager"] = lambda: engine(fp32, dataset, device, cuda_graphs=False)
        runs["auto eager"] = lambda: engine(auto, dataset, device, cuda_graphs=False)
    if compile_s is not None:
        compiled = auto.model_copy(update={"compile": True})
        runs["compiled"] = lambda: engine(compiled, dataset, device, compile_s)
    return runs


def compare(args: argparse.Namespace, device: torch.device, untuned: multiprocessing.pool.Pool) -> None:
    header(device, "train_throughput: classic DataLoader loop vs the worker's engine")
    datasets = ["mnist-10k"] + (["fashion-mnist"] if args.full else [])
    print(f"# batch 64, {args.epochs} epochs, {args.rounds} alternating rounds (seeds 0-{args.rounds - 1}), Adam 1e-3")
    print("# classic*: the classic loop in the engine's process, with malloc tuned as the worker tunes it")
    print(
        f"{'dataset':<14} {'model':<5} {'classic/s':>10} {'classic*/s':>11} {'engine fp32/s':>14} "
        f"{'engine auto/s':>14} {'auto/classic':>13} {'fp32/classic':>13} {'auto/classic*':>14} "
        f"{'acc classic':>12} {'acc fp32':>9} {'acc auto':>9}"
    )
    for dataset_name in datasets:
        try:
            dataset = load(dataset_name)
        except DatasetUnavailable as exc:
            print(f"# {dataset_name}: skipped ({exc})")
            continue
        for model_name, model in MODELS.items():
            base = {"dataset": {"name": dataset_name}, "model": model, "epochs": args.epochs, "device": args.device}
            rates: dict[str, list[float]] = {}
            accuracy: dict[str, list[float]] = {}
            compile_s: list[float] | None = [] if args.compile else None
            # Round r trains every variant with seed r: the same seed within a round, and accuracies over several
            # seeds (one seed repeated gives the same accuracy every round: the engine is deterministic).
            for seed in range(args.rounds):
                fp32 = ExperimentSpec.model_validate({**base, "precision": "fp32", "seed": seed})
                for key, run in variants(fp32, dataset, device, untuned, compile_s).items():
                    r, a = run()
                    rates.setdefault(key, []).extend(r)
                    accuracy.setdefault(key, []).append(a)
            m = {k: median(v) for k, v in rates.items()}
            acc = {k: median(v) for k, v in accuracy.items()}
            print(
                f"{dataset_name:<14} {model_name:<5} {m['classic']:>10.0f} {m['classic*']:>11.0f} {m['fp32']:>14.0f} "
                f"{m['auto']:>14.0f} {m['auto'] / m['classic']:>12.2f}x {m['fp32'] / m['classic']:>12.2f}x "
                f"{m['auto'] / m['classic*']:>13.2f}x {acc['classic']:>12.4f} {acc['fp32']:>9.4f} {acc['auto']:>9.4f}"
            )
            per_seed = zip(accuracy["classic"], accuracy["fp32"], accuracy["auto"], strict=True)
            gap = max(abs(a - f) for f, a in zip(accuracy["fp32"], accuracy["auto"], strict=True))
            print(
                f"#   {model_name} accuracy by seed, classic / fp32 / auto: "
                + "; ".join(f"{seed}: {c:.4f} / {f:.4f} / {a:.4f}" for seed, (c, f, a) in enumerate(per_seed))
                + f"; largest |auto - fp32| at one seed {gap * 100:.2f} pp"
            )
            if device.type == "cuda":
                print(
                    f"#   {model_name} without CUDA graphs: fp32 {m['fp32 eager']:.0f}/s = "
                    f"{m['fp32 eager'] / m['classic']:.2f}x classic, auto {m['auto eager']:.0f}/s = "
                    f"{m['auto eager'] / m['classic']:.2f}x; graphs give fp32 {m['fp32'] / m['fp32 eager']:.2f}x, "
                    f"auto {m['auto'] / m['auto eager']:.2f}x; acc fp32 {acc['fp32 eager']:.4f}, "
                    f"auto {acc['auto eager']:.4f}"
                )
            if compile_s is not None:
                # The first round compiles; later rounds reuse this process's compiled graphs (as a worker does).
                print(
                    f"#   {model_name} with compile: true (auto): {m['compiled']:.0f}/s = "
                    f"{m['compiled'] / m['classic']:.2f}x classic, "
                    f"{m['compiled'] / m['auto']:.2f}x the engine's default auto; "
                    f"acc {acc['compiled']:.4f}; compile s per round {[round(c, 1) for c in compile_s]}"
                )


if __name__ == "__main__":
    main()
