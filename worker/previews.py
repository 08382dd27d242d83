"""Real training images as the model will see them after augmentation, for a spec's preview."""

from __future__ import annotations

import torch

from service.specs import ExperimentSpec
from worker.augment import build_augmentation
from worker.datasets import Dataset
from worker.preprocess import to_unit


def augmentation_samples(spec: ExperimentSpec, dataset: Dataset, *, columns: int = 8, draws: int = 3):
    """[("original", images), ("draw 1", augmented), ...] as uint8 (N, C, H, W), the same images in each row.

    Seeded from the spec, so a preview is stable across calls; drawn with torch's generator forked, so it
    leaves the caller's random state alone."""
    # One image per class where possible, so the grid shows the variety of the data.
    labels = dataset.train.labels
    picks = [int(torch.nonzero(labels == c)[0]) for c in torch.unique(labels)[:columns]]
    originals = dataset.train.images[picks]
    rows = [("original", originals)]
    augment = build_augmentation(spec.augment)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(spec.seed)
        for draw in range(1, draws + 1):
            images = to_unit(originals)
            if augment is not None:
                images = augment(images)
            rows.append((f"draw {draw}", (images * 255).round().clamp(0, 255).to(torch.uint8)))
    return rows
