"""TensorBoard event files per experiment, under `<runs_dir>/<id>/`: `tensorboard --logdir var/runs`.

Scalars every epoch (losses, the task's metrics, lr, samples/s; the training loss within it, `loss/train_within_epochs`,
twenty points an epoch), a grid of training images at the start, and the spec's hyperparameters with the best metrics
at the end (TensorBoard's HParams tab compares runs by them).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from service.specs import EpochMetrics, ExperimentSpec

# EpochMetrics field -> TensorBoard tag; grouped so that train and validation share a chart section.
TAGS = {
    "train_loss": "loss/train", "val_loss": "loss/val",
    "train_accuracy": "accuracy/train", "val_accuracy": "accuracy/val",
    "train_mae": "mae/train", "val_mae": "mae/val", "val_rmse": "rmse/val", "val_r2": "r2/val",
    "lr": "optim/lr", "samples_per_s": "speed/samples_per_s", "duration_s": "speed/epoch_seconds",
}  # fmt: skip


class RunLog:
    def __init__(self, folder: Path, spec: ExperimentSpec) -> None:
        from torch.utils.tensorboard import SummaryWriter  # imported where used: it pulls in TensorBoard

        self.spec = spec
        self.writer = SummaryWriter(log_dir=str(folder), flush_secs=5)

    def images(self, images: torch.Tensor, limit: int = 32) -> None:
        """A grid of uint8 (N, C, H, W) training images, as the model gets them before normalisation."""
        if images.dim() == 4 and images.dtype == torch.uint8 and images.shape[-1] > 1:
            self.writer.add_images("data/training_images", images[:limit], global_step=0, dataformats="NCHW")

    def epoch(self, metrics: EpochMetrics) -> None:
        for field, tag in TAGS.items():
            value = getattr(metrics, field)
            if value is not None:
                self.writer.add_scalar(tag, value, global_step=metrics.epoch)
        # The loss within the epoch, its step counted in parts of an epoch (twentieths; batches, where fewer).
        curve = metrics.train_loss_curve or []
        for k, value in enumerate(curve, start=(metrics.epoch - 1) * len(curve) + 1):
            self.writer.add_scalar("loss/train_within_epochs", value, global_step=k)

    def finish(self, best: dict[str, float]) -> None:
        """The spec's hyperparameters and the run's best metrics, for the HParams tab."""
        self.writer.add_hparams(hyperparameters(self.spec), {f"hparam/{k}": v for k, v in best.items()}, run_name=".")

    def close(self) -> None:
        self.writer.close()


def hyperparameters(spec: ExperimentSpec) -> dict[str, Any]:
    """The spec flattened to TensorBoard's value types (numbers, strings, booleans)."""
    flat: dict[str, Any] = {}

    def walk(value: Any, prefix: str) -> None:
        if isinstance(value, dict):
            for key, item in value.items():
                walk(item, f"{prefix}.{key}" if prefix else key)
        elif isinstance(value, bool | int | float | str):
            flat[prefix] = value
        elif value is not None:  # lists (layers, augmentations, widths) as their JSON text
            flat[prefix] = str(value)

    walk(spec.model_dump(mode="json"), "")
    return flat
