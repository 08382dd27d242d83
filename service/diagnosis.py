"""What an experiment's curves say, in words: steps too large, overfitting, not learning. One reading of them for
every face: the dashboard's note under the curves, `trainlab show` and `watch`, and the SDK all get these from
`GET /experiments/{id}/diagnosis`."""

from __future__ import annotations

import math
from collections.abc import Sequence

from service.schemas import Finding, FindingKind
from service.specs import EpochMetrics

# Each kind of finding as a table names it (`trainlab sweeps ID`; the dashboard's trial table has the same).
SHORT_NAMES: dict[FindingKind, str] = {
    "overshooting": "steps too large", "overfitting": "overfitting", "not_learning": "not learning",
}  # fmt: skip

# Losses on the scale of cross-entropy, where guessing evenly among C classes costs ln C.
LOG_LOSSES = ("cross_entropy", "nll")
# How far past ln C a classifier's training loss must climb to be steps too large. Sound recipes wobble to 2.6x in
# their first batches (AdamW at 0.002 with batchnorm on cifar10-mini: 6.08), too-large steps reach 10x and far
# beyond (Adam at 0.1 on mnist-10k: 23-193; SGD at 0.3 with momentum on fashion-mnist-10k: 1.5e23).
OVERSHOOT = 4.0


def diagnose(rows: Sequence[EpochMetrics], *, classes: int | None, loss_kind: str) -> list[Finding]:
    """The findings that `rows` (the epochs so far, in order) support, most fundamental first. `classes`: a
    classifier's number of classes (None for a regression, or where the dataset is gone)."""
    found = (overshooting(rows, classes, loss_kind), overfitting(rows), not_learning(rows, classes))
    return [finding for finding in found if finding is not None]


def overshooting(rows: Sequence[EpochMetrics], classes: int | None, loss_kind: str) -> Finding | None:
    """A classifier's cross-entropy that climbed anywhere past OVERSHOOT times that of guessing evenly among its
    classes (ln C, about where an untrained model starts): steps so large that they overshoot and leave the model
    confidently wrong. The within-epoch curve shows a blow-up that the epoch's mean hides."""
    if not classes or loss_kind not in LOG_LOSSES or not rows:
        return None
    chance = math.log(classes)
    losses = ((loss, row.epoch) for row in rows for loss in (row.train_loss, *(row.train_loss_curve or ())))
    peak, epoch = max(losses, key=lambda point: point[0])  # the first epoch to reach it
    if not peak > OVERSHOOT * chance:
        return None
    return Finding(
        kind="overshooting",
        message=f"Steps too large: the training loss reached {peak:.3g} in epoch {epoch}, {peak / chance:.3g}x "
        f"that of guessing evenly among {classes} classes ({chance:.2f}, about where an untrained model starts): "
        "each step overshoots, and the model grows confidently wrong. Lower optimizer.lr (3-10x at a time), warm "
        "it up (scheduler onecycle), or clip the gradients (grad_clip_norm).",
    )


def overfitting(rows: Sequence[EpochMetrics]) -> Finding | None:
    """The validation loss risen by a tenth or more over two epochs or more past its lowest while the training
    loss kept falling (a plateau a few percent above the lowest is noise). By a loss, not an accuracy: a
    classifier grows overconfident on the validation images it gets wrong before its accuracy drops."""
    if not rows:
        return None
    best = min(rows, key=lambda row: row.val_loss)  # the first of equals
    last = rows[-1]
    if last.epoch - best.epoch < 2 or last.val_loss < best.val_loss * 1.1 or last.train_loss >= best.train_loss:
        return None
    return Finding(
        kind="overfitting",
        message=f"Overfitting: the validation loss has risen since epoch {best.epoch} ({best.val_loss:.4f} → "
        f"{last.val_loss:.4f}) while the training loss kept falling ({best.train_loss:.4f} → {last.train_loss:.4f}): "
        "the model learns its training examples' particulars more than what carries over to new ones. Fewer "
        "epochs (early_stopping stops at the best one), more data or augmentation, dropout or weight decay help.",
    )


def not_learning(rows: Sequence[EpochMetrics], classes: int | None) -> Finding | None:
    """Two or more epochs at chance (a classifier) or no better than the mean (a regression's R²), with a training
    loss within 5% of the first epoch's: what to look at."""
    if len(rows) < 2:
        return None
    first, last = rows[0], rows[-1]
    if last.train_loss < 0.95 * first.train_loss:
        return None
    if any(row.val_accuracy is not None for row in rows):
        best = max(row.val_accuracy for row in rows if row.val_accuracy is not None)
        if not classes or best > 1.5 / classes:
            return None
        where = f"its validation accuracy is at most {best:.3f}, chance for {classes} classes"
    else:
        best = max((row.val_r2 for row in rows if row.val_r2 is not None), default=-math.inf)
        if best > 0.05:
            return None
        where = f"its validation R² is at most {best:.3f}, no better than predicting the mean"
    return Finding(
        kind="not_learning",
        message=f"Not learning: after {len(rows)} epochs {where}, and the training loss has barely moved "
        f"({first.train_loss:.4f} → {last.train_loss:.4f}). Look at the learning rate (too low to move the weights, "
        "or so high that each step overshoots), at the gradients by layer (vanishing on their way back to the "
        "first layers: ReLU instead of sigmoid, or batchnorm, helps; or ReLUs left dead by steps too large), and at "
        "whether the labels match the inputs.",
    )
