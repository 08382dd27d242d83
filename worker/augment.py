"""Data augmentation on whole batches, on the training device, with fresh random parameters per image.

torchvision's v2 transforms draw one set of parameters per call, so a batched call would flip, rotate or crop
every image of a batch alike; these draw per image and stay vectorised. They work on float images in [0, 1]
(before standardisation) and use torch's global generator, which the engine reseeds every epoch.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F

from service.specs import (
    AugmentationSpec,
    ColorJitter,
    GaussianNoise,
    HFlip,
    RandomCrop,
    RandomErasing,
    Rotation,
    VFlip,
)

Augmentation = Callable[[torch.Tensor], torch.Tensor]


def _uniform(n: int, low: float, high: float, device: torch.device) -> torch.Tensor:
    return torch.rand(n, device=device) * (high - low) + low


def _per_image(mask: torch.Tensor) -> torch.Tensor:
    return mask.view(-1, 1, 1, 1)


def _hflip(spec: HFlip, x: torch.Tensor) -> torch.Tensor:
    return torch.where(_per_image(torch.rand(len(x), device=x.device) < spec.p), x.flip(-1), x)


def _vflip(spec: VFlip, x: torch.Tensor) -> torch.Tensor:
    return torch.where(_per_image(torch.rand(len(x), device=x.device) < spec.p), x.flip(-2), x)


def _rotation(spec: Rotation, x: torch.Tensor) -> torch.Tensor:
    angles = _uniform(len(x), -spec.degrees, spec.degrees, x.device) * (math.pi / 180)
    cos, sin, zero = angles.cos(), angles.sin(), torch.zeros_like(angles)
    theta = torch.stack([torch.stack([cos, -sin, zero], 1), torch.stack([sin, cos, zero], 1)], 1)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def _random_crop(spec: RandomCrop, x: torch.Tensor) -> torch.Tensor:
    n, _, h, w = x.shape
    pad = spec.padding
    padded = F.pad(x, (pad, pad, pad, pad))
    top = torch.randint(0, 2 * pad + 1, (n, 1), device=x.device)
    left = torch.randint(0, 2 * pad + 1, (n, 1), device=x.device)
    rows = (top + torch.arange(h, device=x.device)).view(n, h, 1)
    cols = (left + torch.arange(w, device=x.device)).view(n, 1, w)
    # (N, H, W, C) by advanced indexing, back to (N, C, H, W).
    return padded[torch.arange(n, device=x.device).view(n, 1, 1), :, rows, cols].permute(0, 3, 1, 2)


def _gaussian_noise(spec: GaussianNoise, x: torch.Tensor) -> torch.Tensor:
    return (x + torch.randn_like(x) * spec.std).clamp_(0.0, 1.0)


def _gray(x: torch.Tensor) -> torch.Tensor:
    if x.shape[1] == 1:
        return x
    r, g, b = x[:, 0:1], x[:, 1:2], x[:, 2:3]
    return 0.299 * r + 0.587 * g + 0.114 * b


def _color_jitter(spec: ColorJitter, x: torch.Tensor) -> torch.Tensor:
    n, device = len(x), x.device
    if spec.brightness:
        x = x * _per_image(_uniform(n, 1 - spec.brightness, 1 + spec.brightness, device))
    if spec.contrast:
        mean = _gray(x).mean(dim=(1, 2, 3), keepdim=True)
        x = (x - mean) * _per_image(_uniform(n, 1 - spec.contrast, 1 + spec.contrast, device)) + mean
    if x.shape[1] == 3 and spec.saturation:
        gray = _gray(x)
        x = (x - gray) * _per_image(_uniform(n, 1 - spec.saturation, 1 + spec.saturation, device)) + gray
    if x.shape[1] == 3 and spec.hue:
        x = _shift_hue(x, _uniform(n, -spec.hue, spec.hue, device))
    return x.clamp(0.0, 1.0)


_RGB_TO_YIQ = torch.tensor([[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]])


def _shift_hue(x: torch.Tensor, turns: torch.Tensor) -> torch.Tensor:
    """Rotate chroma in YIQ space by `turns` of a full circle per image (the classic linear hue shift)."""
    to_yiq = _RGB_TO_YIQ.to(x.device)
    yiq = torch.einsum("ij,njhw->nihw", to_yiq, x)
    angle = turns * 2 * math.pi
    cos, sin = _per_image(angle.cos()), _per_image(angle.sin())
    i, q = yiq[:, 1:2], yiq[:, 2:3]
    yiq = torch.cat([yiq[:, 0:1], i * cos - q * sin, i * sin + q * cos], dim=1)
    return torch.einsum("ij,njhw->nihw", torch.linalg.inv(to_yiq), yiq)


def _random_erasing(spec: RandomErasing, x: torch.Tensor) -> torch.Tensor:
    n, _, h, w = x.shape
    device = x.device
    area = _uniform(n, spec.scale[0], spec.scale[1], device) * h * w
    aspect = torch.exp(_uniform(n, math.log(0.3), math.log(1 / 0.3), device))
    eh = (area * aspect).sqrt().round().clamp(1, h)
    ew = (area / aspect).sqrt().round().clamp(1, w)
    top = (torch.rand(n, device=device) * (h - eh + 1)).floor()
    left = (torch.rand(n, device=device) * (w - ew + 1)).floor()
    rows = torch.arange(h, device=device).view(1, h, 1)
    cols = torch.arange(w, device=device).view(1, 1, w)
    inside = (
        (rows >= top.view(n, 1, 1)) & (rows < (top + eh).view(n, 1, 1))
        & (cols >= left.view(n, 1, 1)) & (cols < (left + ew).view(n, 1, 1))
    )  # fmt: skip
    erase = inside & (torch.rand(n, device=device) < spec.p).view(n, 1, 1)
    # Filled with each image's mean, which standardisation then maps close to zero.
    fill = x.mean(dim=(2, 3), keepdim=True)
    return torch.where(erase.unsqueeze(1), fill, x)


_AUGMENTATIONS: dict[str, Callable[..., torch.Tensor]] = {
    "hflip": _hflip,
    "vflip": _vflip,
    "rotation": _rotation,
    "random_crop": _random_crop,
    "gaussian_noise": _gaussian_noise,
    "color_jitter": _color_jitter,
    "random_erasing": _random_erasing,
}


def build_augmentation(specs: Sequence[AugmentationSpec]) -> Augmentation | None:
    """The specs applied in order to a float (N, C, H, W) batch in [0, 1]; None when there are none."""
    if not specs:
        return None

    def augment(x: torch.Tensor) -> torch.Tensor:
        for spec in specs:
            x = _AUGMENTATIONS[spec.kind](spec, x)
        return x

    return augment


def augmentation_warnings(
    specs: Sequence[AugmentationSpec], *, dataset: str, channels: int, orientation_matters: bool
) -> list[str]:
    """Augmentations known to hurt on this kind of data, said before any epoch is spent on them."""
    warnings = []
    for i, spec in enumerate(specs):
        where = f"augment[{i}] ({spec.kind})"
        if orientation_matters and spec.kind in ("hflip", "vflip"):
            warnings.append(
                f"{where}: {dataset} holds digits, whose mirror images are not digits (or are other ones): "
                "flipping usually lowers accuracy here"
            )
        if orientation_matters and spec.kind == "rotation" and spec.degrees > 30:
            warnings.append(
                f"{where}: rotations over 30 degrees turn digits into other digits (6 and 9, 2 and 7) on {dataset}; "
                "keep degrees at 30 or below"
            )
        if channels == 1 and spec.kind == "color_jitter":
            unused = [name for name in ("saturation", "hue") if getattr(spec, name)]
            warnings.append(
                f"{where}: {dataset} is grayscale, so colour jitter can only change brightness and contrast"
                + (f"; {' and '.join(unused)} have no effect" if unused else "")
            )
    return warnings
