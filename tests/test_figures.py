"""The image grids of the PNG endpoints: every image whole, each caption over its own image, labels on the left."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image

from service.figures import render_gallery, render_image_rows


def pixels(png: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(png)).convert("L"))


def image_boxes(gray: np.ndarray) -> list[tuple[int, int, int, int]]:
    """(top, bottom, left, right) of each black square, in reading order: the images, drawn black on white."""
    dark = gray < 10
    rows = np.flatnonzero(dark.sum(1) > 20)
    bands = np.split(rows, np.flatnonzero(np.diff(rows) > 1) + 1)
    boxes = []
    for band in bands:
        columns = np.flatnonzero(dark[band[len(band) // 2]])
        for run in np.split(columns, np.flatnonzero(np.diff(columns) > 1) + 1):
            boxes.append((int(band[0]), int(band[-1]), int(run[0]), int(run[-1])))
    return boxes


@pytest.mark.parametrize("count", [1, 3, 11])
def test_gallery_captions_sit_centred_over_their_images(count: int) -> None:
    images = torch.zeros(count, 3, 28, 28, dtype=torch.uint8)
    gray = pixels(render_gallery(images, ["true 7\npred 1"] * count, "a title", columns=8))
    boxes = image_boxes(gray)
    assert len(boxes) == count
    for top, _, left, right in boxes:
        assert right - left + 1 >= 100  # 28 pixels shown at 1.2 inches, 100 dpi
        ink = np.flatnonzero((gray[top - 25 : top - 1, left:right] < 128).any(0))
        assert len(ink) > 0, "no caption over the image"
        centre, middle = (ink[0] + ink[-1]) / 2, (right - left) / 2
        assert abs(centre - middle) <= 3, (centre, middle)


def test_image_rows_are_labelled_on_their_left() -> None:
    rows = [(label, torch.zeros(4, 1, 8, 8, dtype=torch.uint8)) for label in ("original", "draw 1")]
    gray = pixels(render_image_rows(rows, "augmentations"))
    boxes = image_boxes(gray)
    assert len(boxes) == 8
    for top, bottom, left, _ in boxes[::4]:  # the first image of each row
        assert (gray[top:bottom, : left - 5] < 128).any(), "no label left of the row"


def test_an_empty_gallery_still_renders() -> None:
    gray = pixels(render_gallery(torch.zeros(0, 1, 8, 8, dtype=torch.uint8), [], "no mistakes"))
    assert (gray < 128).any()
