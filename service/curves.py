"""Loss and accuracy curves as a PNG, drawn with matplotlib's object API (thread-safe, no pyplot state)."""

from __future__ import annotations

import io

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from service.specs import EpochMetrics


def render_curves(metrics: list[EpochMetrics], title: str) -> bytes:
    figure = Figure(figsize=(10, 4), dpi=100, layout="constrained")
    FigureCanvasAgg(figure)
    loss_ax, acc_ax = figure.subplots(1, 2)
    epochs = [m.epoch for m in metrics]
    for ax, metric, label in ((loss_ax, "loss", "Loss"), (acc_ax, "accuracy", "Accuracy")):
        ax.plot(epochs, [getattr(m, f"train_{metric}") for m in metrics], "o-", label="train")
        ax.plot(epochs, [getattr(m, f"val_{metric}") for m in metrics], "s-", label="validation")
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylabel(label)
        ax.set_title(label)
        ax.grid(True, alpha=0.3)
        if metrics:
            ax.legend()
        else:
            ax.text(0.5, 0.5, "no finished epoch yet", ha="center", va="center", transform=ax.transAxes)
    figure.suptitle(title)
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    return buffer.getvalue()
