"""Checkpoints as bytes: everything needed to resume training or to serve predictions, and nothing that
needs pickle to read back (`torch.load(..., weights_only=True)` only)."""

from __future__ import annotations

import io
import os
from dataclasses import dataclass

import torch
from torch import nn

from service.specs import ExperimentSpec
from worker.preprocess import Preprocess

FORMAT_VERSION = 1


@dataclass(frozen=True)
class CheckpointContent:
    epoch: int
    spec: ExperimentSpec
    preprocess: Preprocess
    class_names: tuple[str, ...]
    model_state: dict[str, torch.Tensor]
    optimizer_state: dict
    # Everything else a resumed run needs to continue exactly (lr scheduler, early stopping).
    trainer_state: dict


def dump_checkpoint(
    *,
    epoch: int,
    spec: ExperimentSpec,
    preprocess: Preprocess,
    class_names: tuple[str, ...],
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    trainer_state: dict,
) -> bytes:
    buffer = io.BytesIO()
    torch.save(
        {
            "format": FORMAT_VERSION,
            "epoch": epoch,
            "spec": spec.model_dump_json(),
            "preprocess": preprocess.to_dict(),
            "class_names": list(class_names),
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "trainer": trainer_state,
        },
        buffer,
    )
    return buffer.getvalue()


class UnsafeEnvironment(RuntimeError):
    """The process environment would let torch.load run arbitrary pickled code."""


def refuse_unsafe_loading() -> None:
    """API and worker refuse to start when torch is told to load checkpoints with full pickle."""
    if "TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD" in os.environ:
        raise UnsafeEnvironment(
            "TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD is set: torch.load would run arbitrary code from a checkpoint. "
            "Unset it; trainlab checkpoints load with weights_only=True"
        )


class UnreadableCheckpoint(ValueError):
    """The bytes are not a checkpoint this code wrote: truncated, altered, or holding more than plain weights."""


def load_checkpoint(data: bytes, map_location: str | torch.device = "cpu") -> CheckpointContent:
    try:
        raw = torch.load(io.BytesIO(data), map_location=map_location, weights_only=True)
    except Exception as exc:  # torch raises UnpicklingError, RuntimeError, EOFError... for bad bytes
        raise UnreadableCheckpoint(f"not loadable as plain weights: {type(exc).__name__}: {exc}"[:500]) from exc
    if not isinstance(raw, dict) or raw.get("format") != FORMAT_VERSION:
        raise UnreadableCheckpoint("not a trainlab checkpoint (missing or unsupported format version)")
    return CheckpointContent(
        epoch=int(raw["epoch"]),
        spec=ExperimentSpec.model_validate_json(raw["spec"]),
        preprocess=Preprocess.from_dict(raw["preprocess"]),
        class_names=tuple(raw["class_names"]),
        model_state=raw["model"],
        optimizer_state=raw["optimizer"],
        trainer_state=raw.get("trainer", {}),
    )
