"""What the curves say in words (service/diagnosis.py): each finding where its curves show it, and not where they
show something close to it. Real runs that show each one, read in a browser: test_dashboard.py."""

from __future__ import annotations

import math

from service.diagnosis import diagnose
from service.specs import EpochMetrics

CHANCE = math.log(10)


def row(epoch: int, train_loss: float, val_loss: float = 1.0, **fields) -> EpochMetrics:
    return EpochMetrics(
        epoch=epoch, train_loss=train_loss, val_loss=val_loss, lr=0.1, duration_s=1.0, samples_per_s=1.0, **fields
    )


def kinds(rows: list[EpochMetrics], classes: int | None = 10, loss_kind: str = "cross_entropy") -> list[str]:
    return [finding.kind for finding in diagnose(rows, classes=classes, loss_kind=loss_kind)]


def only(kind: str, rows: list[EpochMetrics], classes: int | None = 10, loss_kind: str = "cross_entropy") -> str:
    """The message of the one finding `rows` support, which must be of `kind`."""
    [finding] = diagnose(rows, classes=classes, loss_kind=loss_kind)
    assert finding.kind == kind, finding
    return finding.message


def test_a_training_loss_past_four_times_chance_is_steps_too_large() -> None:
    # Adam at 0.1 on mnist-10k: the first twentieth of the epoch at 158-193 (README); its mean says less.
    message = only("overshooting", [row(1, 3.0, train_loss_curve=[CHANCE, 192.8, 2.5], val_accuracy=0.1)], 10, "nll")
    assert message.startswith(
        "Steps too large: the training loss reached 193 in epoch 1, 83.7x that of guessing evenly among 10 "
        "classes (2.30, about where an untrained model starts)"
    ), message
    assert "optimizer.lr" in message
    # However far it climbed, the figures stay readable (SGD at lr 3 on digits: 2.0e12).
    assert "reached 2e+12 in epoch 1, 8.69e+11x" in only("overshooting", [row(1, 9.0, train_loss_curve=[2.0e12])])
    # The first epoch to reach the peak is named.
    later = [row(1, 2.0, train_loss_curve=[12.0]), row(2, 2.0, train_loss_curve=[12.0])]
    assert "in epoch 1," in diagnose(later, classes=10, loss_kind="cross_entropy")[0].message


def test_no_steps_too_large_near_chance_or_without_a_log_loss_or_classes() -> None:
    assert kinds([row(1, 2.0, train_loss_curve=[CHANCE, 2.5, 1.0])]) == []  # a fresh model's loss, and falling
    assert kinds([row(1, 2.0, train_loss_curve=[4 * CHANCE])]) == []  # four times chance's, not past it
    # A sound recipe's early wobble: AdamW at 0.002 with batchnorm on cifar10-mini, its first epoch's curve.
    assert kinds([row(1, 2.796, train_loss_curve=[2.35, 6.08, 3.16, 2.71, 2.79, 2.66])]) == []
    assert kinds([row(1, 9.0, train_loss_curve=[9.0, 5.0])], classes=10, loss_kind="mse") == []  # the Brier score
    assert kinds([row(1, 9.0, train_loss_curve=[9.0, 5.0])], classes=None, loss_kind="mse") == []  # a regression
    assert kinds([row(1, 9.0)], classes=None) == []  # a classifier whose dataset is gone: chance unknown
    assert kinds([]) == []


def test_a_validation_loss_risen_while_the_training_loss_fell_is_overfitting() -> None:
    message = only("overfitting", [row(1, 1.0, 0.50), row(2, 0.5, 0.40), row(3, 0.3, 0.45), row(4, 0.2, 0.60)])
    assert message.startswith(
        "Overfitting: the validation loss has risen since epoch 2 (0.4000 → 0.6000) while the training loss kept "
        "falling (0.5000 → 0.2000)"
    ), message
    for rows in (  # a plateau a few percent above the lowest; the training loss rising too; one epoch since
        [row(1, 1.0, 0.50), row(2, 0.5, 0.40), row(3, 0.3, 0.41), row(4, 0.2, 0.42)],
        [row(1, 1.0, 0.50), row(2, 0.5, 0.40), row(3, 0.6, 0.50), row(4, 0.7, 0.60)],
        [row(1, 1.0, 0.50), row(2, 0.5, 0.40), row(3, 0.3, 0.60)],
    ):
        assert kinds(rows) == [], rows


def test_epochs_at_chance_with_a_loss_that_barely_moved_are_not_learning() -> None:
    message = only("not_learning", [row(1, 2.303, val_accuracy=0.1135), row(2, 2.301, val_accuracy=0.1135)])
    assert message.startswith(
        "Not learning: after 2 epochs its validation accuracy is at most 0.114, chance for 10 classes, and the "
        "training loss has barely moved (2.3030 → 2.3010)"
    ), message
    regression = [row(epoch, 1.0, val_r2=-0.01) for epoch in (1, 2, 3)]
    assert only("not_learning", regression, None, "mse").startswith(
        "Not learning: after 3 epochs its validation R² is at most -0.010, no better than predicting the mean"
    )
    for rows, classes in (  # above chance; a loss that fell; one epoch; a regression that fits; chance unknown
        ([row(1, 2.30, val_accuracy=0.30), row(2, 2.29, val_accuracy=0.31)], 10),
        ([row(1, 2.30, val_accuracy=0.10), row(2, 2.00, val_accuracy=0.11)], 10),
        ([row(1, 2.30, val_accuracy=0.10)], 10),
        ([row(1, 1.00, val_r2=0.40), row(2, 0.99, val_r2=0.41)], None),
        ([row(1, 2.30, val_accuracy=0.10), row(2, 2.30, val_accuracy=0.10)], None),
    ):
        assert kinds(rows, classes) == [], rows


def test_findings_come_most_fundamental_first() -> None:
    # Steps too large that left the model at chance: both, the cause first.
    rows = [row(1, 50.0, val_accuracy=0.1), row(2, 49.0, val_accuracy=0.1)]
    assert kinds(rows) == ["overshooting", "not_learning"]
