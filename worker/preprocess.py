"""The one image pipeline that training and /predict share: uint8 pixels in, normalised floats out.

Datasets are kept as uint8 (N, C, H, W) tensors; an uploaded image becomes one such (C, H, W) tensor through
`image_to_uint8`, and both go through `normalize`. Tabular rows are float32 (N, F, 1, 1): F features as channels,
so that standardising per channel standardises each feature and one pipeline serves both. The `Preprocess` record
travels inside every checkpoint, so inference never depends on the training data still being around.
"""

from __future__ import annotations

import struct
from dataclasses import asdict, dataclass, replace
from functools import lru_cache

import numpy as np
import torch
from PIL import ExifTags, Image


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
    # Tables: each column's name, and its smallest and largest value: over the whole table in a dataset's record,
    # over the training split in a checkpoint's (empty for images, and in checkpoints written before they were kept).
    feature_names: tuple[str, ...] = ()
    low: tuple[float, ...] = ()
    high: tuple[float, ...] = ()
    # Images: the lowest and highest mean brightness (0 to 1) among the training images, for telling an image
    # unlike all of them (dark strokes on light, for a model of light strokes on dark); empty as above.
    brightness: tuple[float, ...] = ()

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return (self.channels, self.height, self.width)

    @property
    def column_names(self) -> tuple[str, ...]:
        """A table's columns, as the model takes them: their names, or `feature i` where none were kept."""
        return self.feature_names or tuple(f"feature {i}" for i in range(self.channels))

    @property
    def size(self) -> tuple[int, int]:
        """(width, height), as PIL gives sizes."""
        return (self.width, self.height)

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
            feature_names=tuple(str(n) for n in data.get("feature_names", ())),
            low=tuple(float(v) for v in data.get("low", ())),
            high=tuple(float(v) for v in data.get("high", ())),
            brightness=tuple(float(v) for v in data.get("brightness", ())),
        )

    def outside_training_range(self, inputs: torch.Tensor) -> list[str | None]:
        """For each input of a batch, what of it lies outside the training data's range kept here, named with that
        range (`bmi = 0.06 (learnt from 18 to 42.2)`; an image's `mean brightness = 0.90 (learnt from 0.03 to
        0.33)`), where the model's prediction extrapolates; None within it, and where no range was kept."""
        if self.low:  # a table's rows
            rows = inputs.flatten(1)
            names = self.column_names
            found: list[list[str]] = [[] for _ in range(len(rows))]
            beyond = (rows < torch.tensor(self.low)) | (rows > torch.tensor(self.high))
            for row, f in beyond.nonzero().tolist():
                value = rows[row, f].item()
                found[row].append(f"{names[f]} = {value:g} (learnt from {self.low[f]:g} to {self.high[f]:g})")
            return [", ".join(values) or None for values in found]
        if self.brightness:  # uint8 images
            low, high = self.brightness
            return [
                None if low <= b <= high else f"mean brightness = {b:.2f} (learnt from {low:.2f} to {high:.2f})"
                for b in mean_brightness(inputs).tolist()
            ]
        return [None] * len(inputs)


def mean_brightness(images: torch.Tensor) -> torch.Tensor:
    """Each uint8 (N, C, H, W) image's mean over its pixels and channels, from 0 (black) to 1 (white)."""
    return images.flatten(1).sum(1, dtype=torch.float32) / (images[0].numel() * 255)


def with_training_range(preprocess: Preprocess, train: torch.Tensor) -> Preprocess:
    """`preprocess` with what /predict holds an input against, from the training inputs `train`: each feature's
    lowest and highest value (a table's rows), or the lowest and highest mean brightness (uint8 images)."""
    if preprocess.height == preprocess.width == 1:
        rows = train.flatten(1)
        return replace(preprocess, low=tuple(rows.amin(0).tolist()), high=tuple(rows.amax(0).tolist()))
    means = mean_brightness(train)
    return replace(preprocess, brightness=(float(means.min()), float(means.max())))


# Modes of one grey channel (16-bit PNGs open as "I;16", or "I" in older Pillow); "LA" is grey with alpha.
GRAYSCALE_MODES = frozenset({"1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "I;16N"})


def image_to_uint8(image: Image.Image, channels: int, size: tuple[int, int]) -> torch.Tensor:
    """`image` as a (C, H, W) uint8 tensor of `channels` and `size` (width, height): the one path that uploaded
    training images and /predict's images both take, so a model sees at prediction what it saw in training.

    The image is turned upright (by its EXIF orientation: phones store photos sideways), 16-bit grey scaled to 8
    bits (Pillow's own conversion would clip it to white), transparency laid over white (as a page shows it), then
    resized: the shorter side to the target, and a centre crop, so that the aspect ratio is kept.
    """
    image = _upright(image)
    if image.mode == "I" or image.mode.startswith("I;16"):
        image = Image.fromarray((np.clip(np.asarray(image, dtype=np.int64), 0, 65535) >> 8).astype(np.uint8))
    if image.has_transparency_data:
        image = Image.alpha_composite(Image.new("RGBA", image.size, "white"), image.convert("RGBA"))
    image = image.convert("L" if channels == 1 else "RGB")
    if image.size != size:
        scale = max(size[0] / image.width, size[1] / image.height)
        resized = (max(size[0], round(image.width * scale)), max(size[1], round(image.height * scale)))
        image = image.resize(resized, Image.Resampling.BILINEAR, reducing_gap=3.0)
        left, top = (resized[0] - size[0]) // 2, (resized[1] - size[1]) // 2
        image = image.crop((left, top, left + size[0], top + size[1]))
    pixels = torch.from_numpy(np.array(image, dtype=np.uint8, copy=True))
    return pixels.unsqueeze(0) if pixels.ndim == 2 else pixels.permute(2, 0, 1).contiguous()


# EXIF orientation -> the turn that makes the image upright (the tag's values 2-8; 1 is upright).
_UPRIGHT = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}


def _upright(image: Image.Image) -> Image.Image:
    try:
        orientation = image.getexif().get(ExifTags.Base.Orientation)
    except (SyntaxError, struct.error, ValueError, OSError):  # EXIF that does not parse is ignored, as browsers do
        return image
    turn = _UPRIGHT.get(orientation) if isinstance(orientation, int) else None
    return image if turn is None else image.transpose(turn)


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
    # Made once per device, not per batch: a fresh tensor on a GPU is a host-to-device copy each time. Normal
    # tensors even when first asked for under inference mode (/predict): autograd keeps `std` (worker.model_views.saliency).
    with torch.inference_mode(False):
        mean = torch.tensor(preprocess.mean, device=device).view(1, -1, 1, 1)
        std = torch.tensor(preprocess.std, device=device).view(1, -1, 1, 1)
    return mean, std
