"""Classification metrics from a confusion matrix: accuracy, balanced accuracy, F1, per class."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


def confusion_matrix(targets: np.ndarray, predictions: np.ndarray, num_classes: int) -> np.ndarray:
    """counts[i, j] = images of true class i predicted as j."""
    targets, predictions = np.asarray(targets), np.asarray(predictions)
    index = targets * num_classes + predictions
    return np.bincount(index, minlength=num_classes**2).reshape(num_classes, num_classes)


def _safe_divide(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.divide(a, b, out=np.zeros_like(a, dtype=np.float64), where=b > 0)


@dataclass
class Metrics:
    classes: tuple[str, ...]
    confusion: np.ndarray  # counts, true x predicted

    @property
    def total(self) -> int:
        return int(self.confusion.sum())

    @property
    def accuracy(self) -> float:
        return float(np.trace(self.confusion) / max(self.total, 1))

    @property
    def recall(self) -> np.ndarray:
        return _safe_divide(np.diag(self.confusion).astype(float), self.confusion.sum(1))

    @property
    def precision(self) -> np.ndarray:
        return _safe_divide(np.diag(self.confusion).astype(float), self.confusion.sum(0))

    @property
    def f1(self) -> np.ndarray:
        p, r = self.precision, self.recall
        return _safe_divide(2 * p * r, p + r)

    @property
    def present(self) -> np.ndarray:
        """Classes with at least one image: averages over classes ignore absent ones."""
        return self.confusion.sum(1) > 0

    @property
    def balanced_accuracy(self) -> float:
        return float(self.recall[self.present].mean()) if self.present.any() else 0.0

    @property
    def macro_f1(self) -> float:
        return float(self.f1[self.present].mean()) if self.present.any() else 0.0

    def normalized(self) -> np.ndarray:
        """Row-normalised confusion matrix (each true class sums to 1)."""
        return _safe_divide(self.confusion.astype(float), self.confusion.sum(1, keepdims=True))

    def to_dict(self) -> dict:
        return {
            "images": self.total,
            "accuracy": self.accuracy,
            "balanced_accuracy": self.balanced_accuracy,
            "macro_f1": self.macro_f1,
            "per_class": {
                name: {"precision": float(p), "recall": float(r), "f1": float(f), "support": int(s)}
                for name, p, r, f, s in zip(
                    self.classes,
                    self.precision,
                    self.recall,
                    self.f1,
                    self.confusion.sum(1),
                    strict=True,
                )
            },
            "confusion_matrix": self.confusion.tolist(),
            "classes": list(self.classes),
        }

    def table(self) -> str:
        width = max(len(c) for c in self.classes) + 2
        lines = [f"{'class':<{width}}{'precision':>10}{'recall':>10}{'f1':>10}{'support':>9}"]
        for name, p, r, f, s in zip(
            self.classes, self.precision, self.recall, self.f1, self.confusion.sum(1), strict=True
        ):
            lines.append(f"{name:<{width}}{p:>10.4f}{r:>10.4f}{f:>10.4f}{s:>9d}")
        lines.append(
            f"accuracy {self.accuracy:.4f}  balanced accuracy {self.balanced_accuracy:.4f}  "
            f"macro F1 {self.macro_f1:.4f}  ({self.total} images)"
        )
        return "\n".join(lines)


def compute_metrics(
    targets: np.ndarray, predictions: np.ndarray, classes: Sequence[str]
) -> Metrics:
    return Metrics(tuple(classes), confusion_matrix(targets, predictions, len(classes)))
