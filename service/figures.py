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

    from service.schemas import DeadUnitsPublic, LayerGradientPublic
    from worker.model_views import LayerOutput

PNG_RESPONSE = {200: {"content": {"image/png": {}}, "description": "a PNG image"}}


def png_response(data: bytes) -> Response:
    # Figures change as epochs finish: never cached.
    return Response(data, media_type="image/png", headers={"Cache-Control": "no-store"})


def _png(figure: Figure) -> bytes:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    return buffer.getvalue()


def _figure(width: float, height: float, layout: str | None = "constrained") -> Figure:
    # matplotlib is imported on the first figure, not with the API: it adds 0.4 s to every API process's start.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width, height), dpi=100, layout=layout)
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


def loss_curve(metrics: Sequence[EpochMetrics]) -> list[tuple[float, float]]:
    """The training loss within each epoch as (epoch, loss) points: an epoch's parts end at equal fractions of it."""
    return [
        (m.epoch - 1 + (k + 1) / len(m.train_loss_curve), value)
        for m in metrics
        if m.train_loss_curve
        for k, value in enumerate(m.train_loss_curve)
    ]


def render_curves(metrics: list[EpochMetrics], title: str, task: str = "classification") -> bytes:
    """Loss and the task's metrics, train vs validation per epoch."""
    panels = _PANELS[task]
    figure = _figure(5 * len(panels), 4)
    epochs = [m.epoch for m in metrics]
    for ax, (metric, label) in zip(figure.subplots(1, len(panels)), panels, strict=True):
        if metric == "loss" and (within := loss_curve(metrics)):
            ax.plot(*zip(*within, strict=True), "-", color="C0", alpha=0.45, linewidth=1, label="train, within epochs")
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


MAX_DOTS = 5000


def render_predicted_vs_actual(actual: torch.Tensor, predicted: torch.Tensor, title: str, target: str) -> bytes:
    """A regression's predictions against the true targets, one dot an example, beside the diagonal where they
    would be equal; its MAE and R² in the title."""
    actual, predicted = actual.double(), predicted.double()
    mae = float((predicted - actual).abs().mean())
    r2 = float(1 - ((predicted - actual) ** 2).sum() / ((actual - actual.mean()) ** 2).sum().clamp_min(1e-12))
    figure = _figure(5.5, 5)
    ax = figure.subplots()
    # A dot for at most MAX_DOTS examples, evenly spaced (a big table's split would take seconds to draw); the
    # MAE and R² are of all of them.
    step = -(-len(actual) // MAX_DOTS)
    ax.scatter(actual[::step].tolist(), predicted[::step].tolist(), s=12, alpha=0.6)
    if step > 1:
        title += f" ({len(actual[::step]):,} of {len(actual):,} shown)"
    low, high = float(torch.minimum(actual.min(), predicted.min())), float(torch.maximum(actual.max(), predicted.max()))
    ax.plot([low, high], [low, high], "k--", linewidth=1, label="predicted = actual")
    ax.set_xlabel(f"actual {target}")
    ax.set_ylabel(f"predicted {target}")
    ax.grid(True, alpha=0.3)
    ax.legend(loc="upper left")
    figure.suptitle(f"{title}\nMAE {mae:.4g}, R² {r2:.3f}")
    return _png(figure)


def render_comparison(series: Sequence[tuple[str, list[EpochMetrics]]], metric: str, title: str) -> bytes:
    """One line per run: `metric` per epoch; for `train_loss`, each run's loss within its epochs too, faintly."""
    figure = _figure(9, 5)
    ax = figure.subplots()
    for label, metrics in series:
        short = label if len(label) <= 70 else label[:69] + "…"  # a legend as wide as the figure at most
        [line] = ax.plot([m.epoch for m in metrics], [getattr(m, metric) for m in metrics], "o-", label=short,
                         markersize=3)  # fmt: skip
        if metric == "train_loss" and (within := loss_curve(metrics)):
            ax.plot(*zip(*within, strict=True), "-", color=line.get_color(), alpha=0.45, linewidth=1)
    _epoch_axis(ax)
    ax.set_ylabel(metric)
    if series:
        ax.legend(fontsize="small", loc="best")
    figure.suptitle(title)
    return _png(figure)


def render_image_rows(rows: Sequence[tuple[str, torch.Tensor]], title: str) -> bytes:
    """Rows of uint8 (N, C, H, W) images, each row labelled on its left."""
    return _image_grid([list(images) for _, images in rows], title, row_labels=[label for label, _ in rows])


def render_gallery(images: torch.Tensor, captions: Sequence[str], title: str, columns: int = 8) -> bytes:
    """uint8 (N, C, H, W) images in a grid, each with a caption above it."""
    starts = range(0, len(images), columns)
    return _image_grid(
        [list(images[i : i + columns]) for i in starts], title, captions=[captions[i : i + columns] for i in starts]
    )


def _displayable(image: torch.Tensor):
    """A uint8 (C, H, W) image as imshow takes it: (H, W) for grey (drawn with a grey colour map), else (H, W, C)."""
    return image[0].numpy() if len(image) == 1 else image.permute(1, 2, 0).numpy()


# In inches: an image's longer side, the gap between images, a line of caption; the bands for the title and the
# row labels, the margins; the narrowest figure (a title over one or two images stays whole).
_CELL_IN, _GAP_IN, _CAPTION_IN = 1.2, 0.08, 0.14
_TITLE_IN, _LABELS_IN, _MARGIN_IN, _MIN_WIDTH_IN = 0.45, 0.9, 0.05, 6.0


def _image_grid(
    rows: Sequence[Sequence[torch.Tensor]],
    title: str,
    *,
    captions: Sequence[Sequence[str]] = (),
    row_labels: Sequence[str] = (),
) -> bytes:
    """uint8 (C, H, W) images in rows, optionally captioned above and labelled on the left.

    The images are pasted into one mosaic drawn in one axes: a figure of 20-30 small axes took 0.5-0.7 s of CPU
    to lay out and draw, the mosaic ~60 ms (docs/PERFORMANCE.md)."""
    images = [image for row in rows for image in row]
    if not images:
        figure = _figure(_MIN_WIDTH_IN, 1.2, layout=None)
        figure.suptitle(title)
        figure.text(0.5, 0.4, "nothing to show", ha="center", va="center")
        return _png(figure)
    channels = max(image.shape[0] for image in images)
    height = max(image.shape[1] for image in images)
    width = max(image.shape[2] for image in images)
    inches_per_pixel = _CELL_IN / max(height, width)
    gap = max(1, round(_GAP_IN / inches_per_pixel))
    lines = max((caption.count("\n") + 1 for row in captions for caption in row), default=0)
    band = round(lines * _CAPTION_IN / inches_per_pixel)  # above each image, for its caption
    cell_height, cell_width = band + height + gap, width + gap
    columns = max(len(row) for row in rows)
    mosaic = torch.full((channels, gap + len(rows) * cell_height, gap + columns * cell_width), 255, dtype=torch.uint8)
    for r, row in enumerate(rows):
        for c, image in enumerate(row):
            y, x = gap + r * cell_height + band, gap + c * cell_width
            mosaic[:, y : y + image.shape[1], x : x + image.shape[2]] = image.expand(channels, -1, -1)

    left = _LABELS_IN if row_labels else _MARGIN_IN
    plot_width, plot_height = mosaic.shape[2] * inches_per_pixel, mosaic.shape[1] * inches_per_pixel
    figure_width = max(left + plot_width + _MARGIN_IN, _MIN_WIDTH_IN)
    left += (figure_width - left - plot_width - _MARGIN_IN) / 2  # centred when the minimum width applies
    figure_height = _TITLE_IN + plot_height + _MARGIN_IN
    figure = _figure(figure_width, figure_height, layout=None)
    ax = figure.add_axes(
        (left / figure_width, _MARGIN_IN / figure_height, plot_width / figure_width, plot_height / figure_height)
    )
    ax.axis("off")
    ax.imshow(_displayable(mosaic), cmap="gray", vmin=0, vmax=255)
    for r, row in enumerate(captions):
        for c, caption in enumerate(row):
            top = gap + r * cell_height + band
            ax.text(gap + c * cell_width + width / 2, top - 0.5, caption, ha="center", va="bottom", fontsize="x-small")
    for r, label in enumerate(row_labels):
        middle = gap + r * cell_height + band + height / 2
        ax.text(-gap, middle, label, ha="right", va="center", fontsize="small")
    figure.suptitle(title)
    return _png(figure)


# At most this many of a layer's channels are drawn: the most active where the channel count changes, and the same
# ones through the layers after it that keep that count, so that one map can be followed from conv to pool to ReLU.
MAX_CHANNELS = 8


def shown_channels(outputs: Sequence[LayerOutput]) -> list[list[int]]:
    """For each output, the channels whose maps are drawn (none for a flat output), as MAX_CHANNELS says."""
    shown: list[list[int]] = []
    previous: torch.Tensor | None = None
    for output in outputs:
        values = output.values
        if values.dim() != 3:
            channels = []
        elif previous is not None and previous.dim() == 3 and len(previous) == len(values):
            channels = shown[-1]
        else:  # the most active: the largest mean of what a ReLU would keep
            activity = values.clamp_min(0).mean(dim=(1, 2))
            channels = sorted(activity.topk(min(MAX_CHANNELS, len(values))).indices.tolist())
        shown.append(channels)
        previous = values
    return shown


def render_layer_outputs(
    pixels: torch.Tensor, outputs: Sequence[LayerOutput], class_names: Sequence[str], title: str
) -> bytes:
    """An input image and, a row each, what every step of the model makes of it: a few channels' maps (blue
    negative, red positive, one scale a row) or a bar per value; the last row's bars are the classes' scores."""
    import numpy as np

    rows = 1 + len(outputs)
    height = 2 * _TITLE_IN + 0.25 + 1.15 * rows
    figure = _figure(10, height, layout=None)
    figure.subplots_adjust(left=0.25, right=0.9, top=1 - 2 * _TITLE_IN / height, bottom=0.25 / height, hspace=0.45)
    axes = figure.subplots(rows, 1, squeeze=False)[:, 0]

    def label(ax, text: str) -> None:  # in the figure's left band, clear of a bar chart's tick labels
        box = ax.get_position()
        figure.text(0.01, (box.y0 + box.y1) / 2, text, ha="left", va="center", fontsize="small")

    axes[0].imshow(_displayable(pixels), cmap="gray", vmin=0, vmax=255)
    axes[0].axis("off")
    label(axes[0], f"input {list(pixels.shape)}")
    last = len(outputs) - 1
    for i, (ax, output, channels) in enumerate(zip(axes[1:], outputs, shown_channels(outputs), strict=True)):
        values = output.values
        scores = i == last and len(values) == len(class_names) > 1 and values.dim() == 1
        label(ax, f"{output.name}\n{list(values.shape)}" + (": class scores" if scores else ""))
        scale = float(values.abs().max()) or 1.0
        if channels:
            maps = values[channels]
            _, h, w = maps.shape
            gap = max(1, w // 8)
            mosaic = np.full((h, len(channels) * (w + gap) - gap), np.nan)
            for k, channel_map in enumerate(maps):
                mosaic[:, k * (w + gap) : k * (w + gap) + w] = channel_map.numpy()
            ax.imshow(mosaic, cmap="RdBu_r", vmin=-scale, vmax=scale, interpolation="nearest")
            ax.set_xticks([k * (w + gap) + (w - 1) / 2 for k in range(len(channels))], [f"ch {c}" for c in channels])
            ax.tick_params(length=0, labelsize="x-small")
            ax.set_yticks([])
            for side in ax.spines.values():
                side.set_visible(False)
            ax.text(1.01, 0.5, f"±{scale:.3g}", transform=ax.transAxes, va="center", fontsize="x-small")
            continue
        # A bar per value, drawn as one filled outline per colour: bars as patches took 0.6 s for a row of
        # thousands, and a step patch's limits 0.3 s.
        flat = values.flatten()
        x = np.arange(len(flat))
        if scores:
            best = torch.zeros_like(flat)
            best[flat.argmax()] = flat.max()
            parts = [(flat, "tab:gray"), (best, "tab:green")]
            if len(flat) <= 20:
                ax.set_xticks(x, class_names, fontsize="x-small")
        else:
            parts = [(flat.clamp_min(0), "tab:red"), (flat.clamp_max(0), "tab:blue")]
        edges = np.arange(len(flat) + 1) - 0.5  # value i's bar spans i ± 0.5
        for part, colour in parts:
            ax.fill_between(edges, np.append(part.numpy(), 0), step="post", color=colour, linewidth=0)
        ax.axhline(0, color="black", linewidth=0.5)
        ax.set_xlim(-0.5, len(flat) - 0.5)
        ax.tick_params(labelsize="x-small")
    figure.suptitle(f"{title}\nmaps: the most active channels, blue negative, red positive, one scale a row")
    return _png(figure)


def render_saliency(pixels: torch.Tensor, saliency: torch.Tensor, title: str) -> bytes:
    """An image, how much each of its pixels sways a class's score (`worker.model_views.saliency`), and the two
    laid over each other."""
    figure = _figure(9, 3.6)
    image = _displayable(pixels)
    # 1 at the 99th percentile and above: a few extreme gradients would otherwise leave the rest black.
    heat = (saliency / torch.quantile(saliency.flatten(), 0.99).clamp_min(1e-12)).clamp_max(1).numpy()
    for ax, name in zip(figure.subplots(1, 3), ("image", "saliency", "both"), strict=True):
        ax.axis("off")
        ax.set_title(name, fontsize="small")
        if name != "saliency":
            ax.imshow(image, cmap="gray", vmin=0, vmax=255)
        if name != "image":
            ax.imshow(heat, cmap="inferno", alpha=0.6 if name == "both" else 1.0, vmin=0, vmax=1)
    figure.suptitle(f"{title}\nbrighter: a small change of that pixel moves the class's score more (|gradient|)")
    return _png(figure)


def render_weights(weights: torch.Tensor, captions: Sequence[str], title: str, columns: int = 8) -> bytes:
    """(N, C, H, W) weights as images, each on its own scale: mid-grey 0, lighter positive, darker negative (per
    colour channel for RGB filters)."""
    scale = weights.abs().amax(dim=(1, 2, 3), keepdim=True).clamp_min(1e-12)
    images = (127.5 + 127.5 * weights / scale).round().clamp(0, 255).to(torch.uint8)
    return render_gallery(images, captions, f"{title}\nmid-grey 0, lighter positive, darker negative", columns)


def render_feature_weights(weights: torch.Tensor, features: Sequence[str], units: Sequence[str], title: str) -> bytes:
    """A table model's first-layer weights, (N, F): for one unit, a bar a feature, the largest first; for several,
    a row a unit, a column a feature (blue negative, red positive, one scale)."""
    if len(weights) == 1:
        order = weights[0].abs().argsort(descending=True).tolist()
        values = [float(weights[0, i]) for i in order]
        figure = _figure(8, 1.2 + 0.3 * len(order))
        ax = figure.subplots()
        ax.barh(range(len(order)), values, color=["tab:red" if v > 0 else "tab:blue" for v in values])
        ax.set_yticks(range(len(order)), [features[i] for i in order], fontsize="small")
        ax.invert_yaxis()
        ax.axvline(0, color="black", linewidth=0.5)
        ax.set_xlabel(f"weight towards {units[0]}")
        ax.grid(True, axis="x", alpha=0.3)
    else:
        figure = _figure(max(8, 1.5 + 0.45 * len(features)), 2 + 0.3 * len(units))
        ax = figure.subplots()
        scale = float(weights.abs().max()) or 1.0
        shown = ax.imshow(weights.numpy(), cmap="RdBu_r", vmin=-scale, vmax=scale, aspect="auto")
        ax.set_xticks(range(len(features)), features, rotation=45, ha="right", fontsize="small")
        ax.set_yticks(range(len(units)), units, fontsize="small")
        figure.colorbar(shown, ax=ax, shrink=0.8)
    figure.suptitle(f"{title}\non standardised features: a weight is a feature's pull per standard deviation")
    return _png(figure)


def render_gradients(layers: Sequence[LayerGradientPublic], relus: Sequence[DeadUnitsPublic], title: str) -> bytes:
    """Each layer's gradient and weight as root mean squares, a row a layer in the order of the forward pass, on a
    log scale: a gradient that vanishes (or explodes) on its way back to the first layers shows as a slope. Beside
    it, where the model has ReLUs, the share of each one's units that are dead."""
    figure = _figure(13 if relus else 9, 1.6 + 0.28 * max(len(layers), len(relus)))
    ax, dead = figure.subplots(1, 2, width_ratios=(2, 1)) if relus else (figure.subplots(), None)
    if dead is not None:
        relu_rows = range(len(relus))
        dead.barh(relu_rows, [100 * r.dead for r in relus], height=0.8, color="tab:gray")
        dead.set_yticks(relu_rows, [f"{r.name} ({r.units})" for r in relus], fontsize="small")
        dead.set_title("dead ReLUs", fontsize="medium")
        dead.invert_yaxis()
        dead.set_xlim(0, 100)
        dead.set_xlabel("% of its units dead (0 for every example)")
        dead.grid(True, axis="x", alpha=0.3)
    rows = range(len(layers))
    gradients = [layer.gradient_rms or float("nan") for layer in layers]  # frozen or exactly 0: no bar
    ax.barh(rows, gradients, height=0.8, color="tab:red", label="gradient")
    ax.scatter([layer.weight_rms for layer in layers], rows, marker="|", s=120, color="black", label="weight",
               zorder=3)  # fmt: skip
    notes = {None: "  (frozen)", 0.0: "  (gradient 0)"}
    ax.set_yticks(rows, [layer.name + notes.get(layer.gradient_rms, "") for layer in layers], fontsize="small")
    ax.invert_yaxis()
    ax.set_xscale("log")
    ax.set_xlabel("root mean square (log scale)")
    ax.set_title("gradient and weight", fontsize="medium")
    ax.grid(True, axis="x", alpha=0.3)
    ax.legend(loc="lower right", fontsize="small")
    figure.suptitle(title)
    return _png(figure)
