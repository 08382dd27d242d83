"""Model registry (timm-style): a spec's `kind` names the builder. Training and inference both call
`create_model`, so a checkpoint always rebuilds the exact architecture it was trained with."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from service.specs import CNNSpec, MLPSpec

InputShape = tuple[int, int, int]  # (C, H, W)
Builder = Callable[[Any, InputShape, int], nn.Module]

_BUILDERS: dict[str, Builder] = {}


def register_model(kind: str) -> Callable[[Builder], Builder]:
    def decorator(builder: Builder) -> Builder:
        if kind in _BUILDERS:
            raise ValueError(f"model {kind!r} registered twice")
        _BUILDERS[kind] = builder
        return builder

    return decorator


def model_kinds() -> list[str]:
    return sorted(_BUILDERS)


def create_model(spec: Any, input_shape: InputShape, num_classes: int) -> nn.Module:
    """Build the network a model spec describes, for inputs of `input_shape` and `num_classes` outputs."""
    return _BUILDERS[spec.kind](spec, input_shape, num_classes)


def count_parameters(spec: Any, input_shape: InputShape, num_classes: int) -> int:
    """Parameters of the model a spec describes, built on the meta device: no memory, no initialisation."""
    with torch.device("meta"):
        model = create_model(spec, input_shape, num_classes)
    return sum(p.numel() for p in model.parameters())


def uses_conv(model: nn.Module) -> bool:
    return any(isinstance(m, nn.Conv2d) for m in model.modules())


@register_model("mlp")
def _mlp(spec: MLPSpec, input_shape: InputShape, num_classes: int) -> nn.Module:
    c, h, w = input_shape
    layers: list[nn.Module] = [nn.Flatten()]
    width = c * h * w
    for hidden in spec.hidden:
        layers += [nn.Linear(width, hidden), nn.ReLU()]
        if spec.dropout:
            layers.append(nn.Dropout(spec.dropout))
        width = hidden
    layers.append(nn.Linear(width, num_classes))
    return nn.Sequential(*layers)


@register_model("cnn")
def _cnn(spec: CNNSpec, input_shape: InputShape, num_classes: int) -> nn.Module:
    """Blocks of conv (same padding) -> ReLU -> 2x2 pool; pooling stops once the feature map is 1 pixel."""
    c, h, w = input_shape
    pool = {"max": nn.MaxPool2d, "avg": nn.AvgPool2d, "none": None}[spec.pool]
    layers: list[nn.Module] = []
    for channels in spec.channels:
        layers += [nn.Conv2d(c, channels, spec.kernel_size, padding=spec.kernel_size // 2), nn.ReLU()]
        c = channels
        # Even kernels grow the map by one pixel per conv with this padding.
        h, w = h + 1 - spec.kernel_size % 2, w + 1 - spec.kernel_size % 2
        if pool is not None and min(h, w) >= 2:
            layers.append(pool(2))
            h, w = h // 2, w // 2
    layers += [nn.Flatten(), nn.Linear(c * h * w, spec.hidden), nn.ReLU()]
    if spec.dropout:
        layers.append(nn.Dropout(spec.dropout))
    layers.append(nn.Linear(spec.hidden, num_classes))
    return nn.Sequential(*layers)
