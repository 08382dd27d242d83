"""How the ink of grayscale images sits in their frame: light on dark or dark on light, how much of the frame its
box spans, and how wide its strokes are. The dashboard frames a digit drawn on its pad the same way before sending
it: MNIST's digits were scaled to fit 20x20 of their 28x28 pixels (LeCun et al.), with strokes about 2 pixels wide;
Fashion-MNIST's clothes and scikit-learn's 8x8 digits fill theirs, the digits with strokes a fifth of the frame
wide. A drawing framed otherwise than the training images reads worse."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

# Enough images for a stable median, few enough to take milliseconds.
SAMPLE = 1000


@dataclass(frozen=True)
class Ink:
    color: Literal["light", "dark"]
    # The median, over the images, of the larger side of the box around the ink, as a share of the frame's larger
    # side (MNIST: 20/28).
    extent: float
    # The median width of the strokes, as a share of the frame's larger side (MNIST: 2.2/28; scikit-learn's
    # digits: 1.6/8): twice the ink's area over the length of its outline, which a long band of any width has.
    stroke: float


def ink_of(images: torch.Tensor) -> Ink | None:
    """Of uint8 images (N, C, H, W), the first `SAMPLE`; None unless they are grayscale with ink on most. The
    background is the brightness most of the frame's border has; ink is whatever differs from it by more than a
    quarter of the image's largest difference."""
    if images.shape[1] != 1 or len(images) == 0:
        return None
    x = images[:SAMPLE, 0].float()
    border = torch.cat([x[:, 0], x[:, -1], x[:, :, 0], x[:, :, -1]], dim=1)
    dark = bool(border.median() > 127)
    contrast = (255 - x) if dark else x
    contrast = contrast - contrast.amin(dim=(1, 2), keepdim=True)
    inked = contrast > contrast.amax(dim=(1, 2), keepdim=True) / 4
    spans = torch.maximum(_span(inked.any(dim=2)), _span(inked.any(dim=1)))
    side = max(x.shape[1:])
    extent = spans.float().median().item() / side
    if extent == 0:  # most images blank: no ink to frame a drawing like
        return None
    stroke = (2 * inked.sum(dim=(1, 2)) / _outline(inked).clamp(min=1)).median().item() / side
    return Ink("dark" if dark else "light", round(extent, 4), round(stroke, 4))


def _outline(inked: torch.Tensor) -> torch.Tensor:
    """Of each (H, W) mask, the number of sides between an ink pixel and one without (the frame's edge counts as
    without)."""
    padded = torch.nn.functional.pad(inked, (1, 1, 1, 1))
    core = padded[:, 1:-1, 1:-1]
    neighbours = (padded[:, :-2, 1:-1], padded[:, 2:, 1:-1], padded[:, 1:-1, :-2], padded[:, 1:-1, 2:])
    return sum((core & ~n).sum(dim=(1, 2)) for n in neighbours)


def _span(marked: torch.Tensor) -> torch.Tensor:
    """Of each row of booleans, the distance from its first True to its last, inclusive (0: none)."""
    index = torch.arange(marked.shape[1])
    first = torch.where(marked, index, marked.shape[1]).amin(dim=1)
    last = torch.where(marked, index, -1).amax(dim=1)
    return (last - first + 1).clamp(min=0)
