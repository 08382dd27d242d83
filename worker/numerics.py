"""How training does its arithmetic: the autocast precision and the memory layout, chosen for the device."""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass

import torch
from torch import nn

from worker.models import uses_conv

_DTYPES = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def native_bf16(device: torch.device) -> bool:
    """Whether the device computes bf16 in hardware: Ampere or later GPUs; CPUs with AVX-512 BF16 or AMX."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported(including_emulation=False)
    cpu = torch.cpu
    return any(
        getattr(cpu, probe, lambda: False)() for probe in ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    )


@dataclass(frozen=True)
class Numerics:
    """Autocast dtype for the forward pass (None: fp32), channels-last layout for conv nets, and a gradient
    scaler that is active only for fp16 (bf16 has fp32's range and needs none)."""

    device_type: str
    dtype: torch.dtype | None
    channels_last: bool

    @property
    def name(self) -> str:
        return {None: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}[self.dtype]

    def autocast(self) -> AbstractContextManager:
        return torch.autocast(self.device_type, dtype=self.dtype) if self.dtype is not None else nullcontext()

    def layout(self, x: torch.Tensor) -> torch.Tensor:
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x

    def place(self, model: nn.Module, device: torch.device) -> nn.Module:
        """`model` on `device`, its weights in the layout `layout` gives its inputs."""
        return model.to(device, memory_format=torch.channels_last if self.channels_last else torch.preserve_format)

    def scaler(self) -> torch.amp.GradScaler:
        return torch.amp.GradScaler(self.device_type, enabled=self.dtype is torch.float16)


def eval_batch_size(device: torch.device) -> int:
    """Batch size for forward passes without gradients. Big batches keep a GPU busy; on a CPU, a batch whose
    activations stay under malloc's mmap threshold (see worker.allocator) evaluates the default CNN 2.5x faster
    than batch 1024, whose activations are faulted in anew for every batch."""
    return 1024 if device.type == "cuda" else 256


def resolve_precision(precision: str, device: torch.device) -> str:
    """The concrete precision `auto` means on this device."""
    if precision == "auto":
        return "bf16" if native_bf16(device) else "fp32"
    return precision


def resolve_numerics(precision: str, device: torch.device, model: nn.Module) -> Numerics:
    return Numerics(device.type, _DTYPES[resolve_precision(precision, device)], channels_last=uses_conv(model))
