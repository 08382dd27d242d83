"""PNG figures, drawn with matplotlib's object API (thread-safe: no pyplot state)."""

from __future__ import annotations

import io
from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch
from fastapi import Response

from service.specs import EpochMetrics

if TYPE_CHECKING:
    from matplotlib.figure import Figure

PNG_RESPONSE = {200: {"content": {"image/png": {}}, "description": "a PNG image"}}


def png_response(data: bytes) -> Response:
    # Figures change as epochs finish: never cached.
    return Response(data, media_type="image/png", headers={"Cache-Control": "no-store"})


def _png(figure: Figure) -> bytes:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    return buffer.getvalue()


def _figure(width: float, height: float) -> Figure:
    # matplotlib is imported on the first figure, not with the API: it adds 0.4 s to every API process's start.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width, height), dpi=100, layout="constrained")
    FigureCanvasAgg(figure)
    return figure


def _epoch_axis(ax) -> None:
    from matplotlib.ticker import MaxNLocator

    ax.set_xlabel("epoch")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.grid(True, alpha=0.3)


# Panels per task: (metric suffix, title); each shows train and/or validation, whichever the task records.
_PANELS = {
    "classification": (("loss", "Loss"), ("accuracy", "Accuracy")),
    "regression": (("loss", "Loss (standardised target)"), ("mae", "MAE"), ("r2", "R²")),
}


def render_curves(metrics: list[EpochMetrics], title: str, task: str = "classification") -> bytes:
    """Loss and the task's metrics, train vs validation per epoch."""
    panels = _PANELS[task]
    figure = _figure(5 * len(panels), 4)
    epochs = [m.epoch for m in metrics]
    for ax, (metric, label) in zip(figure.subplots(1, len(panels)), panels, strict=True):
        for split, marker in (("train", "o-"), ("val", "s-")):
            values = [getattr(m, f"{split}_{metric}", None) for m in metrics]
            if any(v is not None for v in values) or not metrics:
                ax.plot(epochs, values, marker, label="train" if split == "train" else "validation")
        _epoch_axis(ax)
        ax.set_ylabel(label)
        ax.set_title(label)
        if metrics:
            ax.legend()
        else:
            ax.text(0.5, 0.5, "no finished epoch yet", ha="center", va="center", transform=ax.transAxes)
    figure.suptitle(title)
    return _png(figure)


def render_comparison(series: Sequence[tuple[str, list[EpochMetrics]]], metric: str, title: str) -> bytes:
    """One line per run: `metric` per epoch."""
    figure = _figure(9, 5)
    ax = figure.subplots()
    for label, metrics in series:
        ax.plot([m.epoch for m in metrics], [getattr(m, metric) for m in metrics], "o-", label=label, markersize=3)
    _epoch_axis(ax)
    ax.set_ylabel(metric)
    if series:
        ax.legend(fontsize="small", loc="best")
    figure.suptitle(title)
    return _png(figure)


def render_image_rows(rows: Sequence[tuple[str, torch.Tensor]], title: str) -> bytes:
    """Rows of uint8 (N, C, H, W) images, each row labelled on its left."""
    columns = max(len(images) for _, images in rows)
    figure = _figure(1.1 * columns + 1.2, 1.15 * len(rows) + 0.5)
    axes = figure.subplots(len(rows), columns, squeeze=False)
    for r, (label, images) in enumerate(rows):
        for c in range(columns):
            ax = axes[r][c]
            ax.set_xticks([])
            ax.set_yticks([])
            if c < len(images):
                _show(ax, images[c])
            else:
                ax.axis("off")
        axes[r][0].set_ylabel(label, rotation=0, ha="right", va="center", fontsize="small")
    figure.suptitle(title)
    return _png(figure)


def render_gallery(images: torch.Tensor, captions: Sequence[str], title: str, columns: int = 8) -> bytes:
    """uint8 (N, C, H, W) images in a grid, each with a caption above it."""
    count = max(len(images), 1)
    columns = min(columns, count)
    n_rows = -(-count // columns)
    figure = _figure(1.5 * columns, 1.7 * n_rows + 0.4)
    axes = figure.subplots(n_rows, columns, squeeze=False)
    for i, ax in enumerate(ax for row in axes for ax in row):
        ax.axis("off")
        if i < len(images):
            _show(ax, images[i])
            ax.set_title(captions[i], fontsize="x-small")
    if not len(images):
        axes[0][0].text(0.5, 0.5, "nothing to show", ha="center", va="center")
    figure.suptitle(title)
    return _png(figure)


def _show(ax, image: torch.Tensor) -> None:
    if image.shape[0] == 1:
        ax.imshow(image[0].numpy(), cmap="gray", vmin=0, vmax=255)
    else:
        ax.imshow(image.permute(1, 2, 0).numpy())
