"""What a task optimises and reports: the loss from the spec, and the task's metrics from sums kept on the device.

Classification counts correct predictions. Regression learns the standardised target (so one lr suits targets
of any scale) and reports MAE, RMSE and R² in the target's own units.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from worker.preprocess import Preprocess

Criterion = Callable[..., torch.Tensor]


def brier(outputs: torch.Tensor, labels: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    """A classifier's squared error: of its softmax probabilities against the one-hot labels, summed over the
    classes (the Brier score, 0 to 2 an example), then averaged or summed over the batch."""
    one_hot = F.one_hot(labels, outputs.shape[1]).to(outputs.dtype)
    per_example = (outputs.softmax(dim=1) - one_hot).square().sum(dim=1)
    return per_example.mean() if reduction == "mean" else per_example.sum()


# By task and loss kind (service.specs.TASK_LOSSES).
_CRITERIA: dict[tuple[str, str], Callable[..., Criterion]] = {
    ("classification", "cross_entropy"): lambda spec: (
        lambda out, y, reduction="mean": F.cross_entropy(
            out, y, label_smoothing=spec.label_smoothing, reduction=reduction
        )
    ),
    ("classification", "nll"): lambda spec: (
        lambda out, y, reduction="mean": F.nll_loss(F.log_softmax(out, 1), y, reduction=reduction)
    ),
    ("classification", "mse"): lambda spec: brier,
    ("regression", "mse"): lambda spec: F.mse_loss,
    ("regression", "l1"): lambda spec: F.l1_loss,
    ("regression", "huber"): lambda spec: (
        lambda out, y, reduction="mean": F.huber_loss(out, y, reduction=reduction, delta=spec.delta)
    ),
}


@dataclass(frozen=True)
class Objective:
    task: str
    criterion: Criterion
    target_mean: float = 0.0
    target_std: float = 1.0

    @classmethod
    def of(cls, task: str, loss_spec, preprocess: Preprocess) -> Objective:
        return cls(task, _CRITERIA[task, loss_spec.kind](loss_spec), preprocess.target_mean, preprocess.target_std)

    @property
    def regression(self) -> bool:
        return self.task == "regression"

    def _targets(self, labels: torch.Tensor) -> torch.Tensor:
        return (labels - self.target_mean) / self.target_std if self.regression else labels

    def loss(self, outputs: torch.Tensor, labels: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
        outputs = outputs.float()
        if self.regression:
            outputs = outputs.squeeze(1)
        return self.criterion(outputs, self._targets(labels), reduction=reduction)

    def predictions(self, outputs: torch.Tensor) -> torch.Tensor:
        """Class indices, or the target in its own units."""
        if self.regression:
            return outputs.float().squeeze(1) * self.target_std + self.target_mean
        return outputs.argmax(dim=1)

    def tally(self, outputs: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Sums to add up over an epoch: [correct] or [|error|, error², y, y²], on the device."""
        predicted = self.predictions(outputs.detach())
        if not self.regression:
            return (predicted == labels).sum().double().unsqueeze(0)
        error = (predicted - labels).double()
        y = labels.double()
        return torch.stack([error.abs().sum(), error.square().sum(), y.sum(), y.square().sum()])

    def size(self) -> int:
        return 4 if self.regression else 1

    def metrics(self, sums: list[float], n: int, prefix: str) -> dict[str, float]:
        """The task's metrics, named `{prefix}_accuracy` or `{prefix}_mae` (and for validation RMSE and R²)."""
        if not self.regression:
            return {f"{prefix}_accuracy": sums[0] / n}
        abs_sum, sq_sum, y_sum, y2_sum = sums
        metrics = {f"{prefix}_mae": abs_sum / n}
        if prefix == "val":
            total = y2_sum - y_sum * y_sum / n  # n * variance of the targets
            metrics |= {"val_rmse": (sq_sum / n) ** 0.5, "val_r2": 1.0 - sq_sum / total if total > 0 else 0.0}
        return metrics
