"""The one image pipeline that training and /predict share: uint8 pixels in, normalised floats out.

Datasets are kept as uint8 (N, C, H, W) tensors; an uploaded image becomes one such (C, H, W) tensor through
`image_to_uint8`, and both go through `normalize`. Tabular rows are float32 (N, F, 1, 1): F features as channels,
so that standardising per channel standardises each feature and one pipeline serves both. The `Preprocess` record
travels inside every checkpoint, so inference never depends on the training data still being around.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from functools import lru_cache

import numpy as np
import torch
from PIL import Image


@dataclass(frozen=True)
class Preprocess:
    channels: int
    height: int
    width: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    # Regression: the target's statistics; the model learns (target - mean) / std.
    target_mean: float = 0.0
    target_std: float = 1.0

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return (self.channels, self.height, self.width)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> Preprocess:
        return cls(
            channels=int(data["channels"]),
            height=int(data["height"]),
            width=int(data["width"]),
            mean=tuple(float(m) for m in data["mean"]),
            std=tuple(float(s) for s in data["std"]),
            target_mean=float(data.get("target_mean", 0.0)),
            target_std=float(data.get("target_std", 1.0)),
        )


def image_to_uint8(image: Image.Image, preprocess: Preprocess) -> torch.Tensor:
    """Colour mode and size as the model was trained on, as a (C, H, W) uint8 tensor."""
    image = image.convert("L" if preprocess.channels == 1 else "RGB")
    if image.size != (preprocess.width, preprocess.height):
        image = image.resize((preprocess.width, preprocess.height), Image.Resampling.BILINEAR)
    pixels = torch.from_numpy(np.array(image, dtype=np.uint8, copy=True))
    return pixels.unsqueeze(0) if pixels.ndim == 2 else pixels.permute(2, 0, 1).contiguous()


def to_unit(images: torch.Tensor) -> torch.Tensor:
    """uint8 (N, C, H, W) -> float32 in [0, 1]: where augmentations work. Tabular features stay as they are."""
    return images.float().div_(255.0) if images.dtype == torch.uint8 else images.float()


def standardize(images: torch.Tensor, preprocess: Preprocess) -> torch.Tensor:
    """Float images in [0, 1] -> standardised per channel with the dataset's mean and std."""
    mean, std = _stats(preprocess, images.device)
    return (images - mean) / std


def normalize(images: torch.Tensor, preprocess: Preprocess) -> torch.Tensor:
    """uint8 (N, C, H, W) -> what the model sees (no augmentation): `standardize(to_unit(images))`."""
    return standardize(to_unit(images), preprocess)


@lru_cache(maxsize=16)
def _stats(preprocess: Preprocess, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    # Made once per device, not per batch: a fresh tensor on a GPU is a host-to-device copy each time.
    mean = torch.tensor(preprocess.mean, device=device).view(1, -1, 1, 1)
    std = torch.tensor(preprocess.std, device=device).view(1, -1, 1, 1)
    return mean, std
