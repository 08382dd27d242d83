"""What a trained classifier gets right and wrong on a labelled split: loss, accuracy, confusion, worst errors."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from worker.datasets import Split
from worker.inference import Predictor


@dataclass(frozen=True)
class Evaluation:
    epoch: int
    class_names: tuple[str, ...]
    split: Split  # what was evaluated, images included (for galleries of errors)
    logits: torch.Tensor  # (N, K)
    tabular: bool  # rows of a table, not images

    @classmethod
    def of(cls, predictor: Predictor, split: Split) -> Evaluation:
        return cls(predictor.epoch, predictor.class_names, split, predictor.logits(split.images), predictor.tabular)

    @property
    def labels(self) -> torch.Tensor:
        return self.split.labels

    @property
    def predicted(self) -> torch.Tensor:
        return self.logits.argmax(dim=1)

    @property
    def loss(self) -> float:
        return float(F.cross_entropy(self.logits, self.labels))

    @property
    def accuracy(self) -> float:
        return float((self.predicted == self.labels).float().mean())

    def confusion(self) -> torch.Tensor:
        """(K, K) counts: row = true class, column = predicted class."""
        k = len(self.class_names)
        return torch.bincount(self.labels * k + self.predicted, minlength=k * k).view(k, k)

    def per_class_accuracy(self) -> list[float | None]:
        """Each class's share of its examples classified right (recall), by the confusion matrix's rows."""
        return self._diagonal_share(self.confusion())

    def per_class_precision(self) -> list[float | None]:
        """Of the examples classified as each class, the share that were of it, by the matrix's columns."""
        return self._diagonal_share(self.confusion().T)

    @staticmethod
    def _diagonal_share(matrix: torch.Tensor) -> list[float | None]:
        totals = matrix.sum(dim=1)
        return [float(matrix[i, i] / totals[i]) if totals[i] else None for i in range(len(matrix))]

    def worst_errors(self, limit: int, true: int | None = None, predicted: int | None = None) -> list[int]:
        """Indices of misclassified examples, most confidently wrong first; only those of class `true`, and only
        those taken for class `predicted`, where given (a cell, row or column of the confusion matrix)."""
        probabilities = torch.softmax(self.logits, dim=1)
        wrong = self.predicted != self.labels
        if true is not None:
            wrong &= self.labels == true
        if predicted is not None:
            wrong &= self.predicted == predicted
        wrong = torch.nonzero(wrong).flatten()
        confidence = probabilities[wrong].max(dim=1).values
        return wrong[confidence.argsort(descending=True)][:limit].tolist()
