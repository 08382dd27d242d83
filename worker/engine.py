"""The training engine: plain train/evaluate loops over in-memory uint8 tensors, one checkpoint per epoch.

Batches are index slices of tensors that live on the training device (no DataLoader, no per-sample decode).
Each epoch reseeds from (spec.seed, epoch), so a run resumed from epoch k's checkpoint replays the same
shuffles and dropout masks as one that was never interrupted.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from service.specs import EpochMetrics, ExperimentSpec
from worker.checkpoints import CheckpointContent, dump_checkpoint
from worker.datasets import Dataset, Split
from worker.models import create_model
from worker.preprocess import Preprocess, normalize

EVAL_BATCH_SIZE = 1024

OnEpoch = Callable[[EpochMetrics, bytes], None]
ShouldStop = Callable[[], bool]


class Interrupted(Exception):
    """Training stopped at a batch boundary because `should_stop()` said so."""


_OPTIMIZERS: dict[str, Callable[..., torch.optim.Optimizer]] = {
    "sgd": lambda spec, params: torch.optim.SGD(
        params, lr=spec.lr, momentum=spec.momentum, nesterov=spec.nesterov, weight_decay=spec.weight_decay
    ),
    "adam": lambda spec, params: torch.optim.Adam(params, lr=spec.lr, weight_decay=spec.weight_decay),
}


def build_optimizer(spec, params: Iterable[nn.Parameter]) -> torch.optim.Optimizer:
    return _OPTIMIZERS[spec.kind](spec, params)


def resolve_device(requested: str) -> torch.device:
    if requested == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("the spec asks for device 'cuda' but this worker has no CUDA device; use 'auto' or 'cpu'")
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(requested)


def epoch_seed(seed: int, epoch: int) -> int:
    return (seed * 1_000_003 + epoch) % 2**63


@dataclass(frozen=True)
class DeviceSplit:
    images: torch.Tensor
    labels: torch.Tensor

    @classmethod
    def of(cls, split: Split, device: torch.device) -> DeviceSplit:
        return cls(split.images.to(device), split.labels.to(device))

    def __len__(self) -> int:
        return len(self.labels)


def train_one_epoch(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    data: DeviceSplit,
    preprocess: Preprocess,
    *,
    batch_size: int,
    generator: torch.Generator,
    should_stop: ShouldStop = lambda: False,
) -> tuple[float, float]:
    """One pass over `data` in a seeded random order. Returns (mean loss, accuracy)."""
    model.train()
    n = len(data)
    device = data.labels.device
    # Drawn on the CPU so the order does not depend on the device.
    order = torch.randperm(n, generator=generator).to(device)
    loss_sum = torch.zeros((), device=device)
    correct = torch.zeros((), dtype=torch.long, device=device)
    for start in range(0, n, batch_size):
        if should_stop():
            raise Interrupted
        idx = order[start : start + batch_size]
        inputs, targets = normalize(data.images[idx], preprocess), data.labels[idx]
        logits = model(inputs)
        loss = F.cross_entropy(logits, targets)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        # Accumulated on the device; read once at the end of the epoch.
        loss_sum += loss.detach() * len(idx)
        correct += (logits.argmax(dim=1) == targets).sum()
    return loss_sum.item() / n, correct.item() / n


@torch.inference_mode()
def evaluate(model: nn.Module, data: DeviceSplit, preprocess: Preprocess) -> tuple[float, float]:
    """Mean loss and accuracy over `data`, in eval mode."""
    model.eval()
    loss_sum = torch.zeros((), device=data.labels.device)
    correct = torch.zeros((), dtype=torch.long, device=data.labels.device)
    for start in range(0, len(data), EVAL_BATCH_SIZE):
        inputs = normalize(data.images[start : start + EVAL_BATCH_SIZE], preprocess)
        targets = data.labels[start : start + EVAL_BATCH_SIZE]
        logits = model(inputs)
        loss_sum += F.cross_entropy(logits, targets, reduction="sum")
        correct += (logits.argmax(dim=1) == targets).sum()
    return loss_sum.item() / len(data), correct.item() / len(data)


def fit(
    spec: ExperimentSpec,
    dataset: Dataset,
    device: torch.device,
    *,
    on_epoch: OnEpoch,
    resume: CheckpointContent | None = None,
    should_stop: ShouldStop = lambda: False,
) -> None:
    """Train epochs (resume.epoch + 1 or 1) .. spec.epochs; after each, evaluate and hand over metrics and a
    checkpoint to `on_epoch`. Raises Interrupted when `should_stop()` turns true."""
    info = dataset.info
    torch.manual_seed(spec.seed)
    model = create_model(spec.model, info.preprocess.input_shape, info.num_classes).to(device)
    optimizer = build_optimizer(spec.optimizer, model.parameters())
    first_epoch = 1
    if resume is not None:
        model.load_state_dict(resume.model_state)
        optimizer.load_state_dict(resume.optimizer_state)
        first_epoch = resume.epoch + 1

    train, val = DeviceSplit.of(dataset.train, device), DeviceSplit.of(dataset.val, device)
    for epoch in range(first_epoch, spec.epochs + 1):
        seed = epoch_seed(spec.seed, epoch)
        torch.manual_seed(seed)
        started = time.perf_counter()
        train_loss, train_accuracy = train_one_epoch(
            model,
            optimizer,
            train,
            info.preprocess,
            batch_size=spec.batch_size,
            generator=torch.Generator().manual_seed(seed),
            should_stop=should_stop,
        )
        train_seconds = time.perf_counter() - started
        val_loss, val_accuracy = evaluate(model, val, info.preprocess)
        metrics = EpochMetrics(
            epoch=epoch,
            train_loss=train_loss,
            train_accuracy=train_accuracy,
            val_loss=val_loss,
            val_accuracy=val_accuracy,
            lr=optimizer.param_groups[0]["lr"],
            duration_s=time.perf_counter() - started,
            samples_per_s=len(train) / train_seconds,
        )
        checkpoint = dump_checkpoint(
            epoch=epoch,
            spec=spec,
            preprocess=info.preprocess,
            class_names=info.class_names,
            model=model,
            optimizer=optimizer,
        )
        on_epoch(metrics, checkpoint)
