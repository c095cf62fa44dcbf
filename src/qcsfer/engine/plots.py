"""Pictures of a run: training curves and confusion matrices (matplotlib, optional)."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from .epoch_record import EpochRecord
from .metrics import Metrics

log = logging.getLogger(__name__)


def _figure(figsize: tuple[float, float]):
    """A bare Figure, or None (logged) without matplotlib.

    Figure rather than pyplot: no global backend switch or figure registry in the
    programs that train through the library.
    """
    try:
        from matplotlib.figure import Figure
    except ImportError:
        log.info("matplotlib is not installed: no plots (pip install 'qcsfer[plots]')")
        return None
    return Figure(figsize=figsize)


def plot_confusion(metrics: Metrics, path: str | Path, title: str = "") -> bool:
    """Row-normalised matrix coloured, with the counts and percentages written in each cell."""
    k = len(metrics.classes)
    fig = _figure((1.0 * k + 2.5, 1.0 * k + 2))
    if fig is None:
        return False
    norm = metrics.normalized()
    ax = fig.subplots()
    ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    for i in range(k):
        for j in range(k):
            color = "white" if norm[i, j] > 0.5 else "black"
            ax.text(
                j,
                i,
                f"{norm[i, j]:.0%}\n{metrics.confusion[i, j]}",
                ha="center",
                va="center",
                fontsize=8,
                color=color,
            )
    ax.set_xticks(range(k), metrics.classes, rotation=45, ha="right")
    ax.set_yticks(range(k), metrics.classes)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(
        title or f"accuracy {metrics.accuracy:.2%}, balanced {metrics.balanced_accuracy:.2%}"
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return True


def plot_curves(history: list[EpochRecord], path: str | Path) -> bool:
    """Loss and validation accuracy per epoch."""
    fig = _figure((10, 3.8)) if history else None
    if fig is None:
        return False
    epochs = np.array([h.epoch for h in history])
    left, right = fig.subplots(1, 2)
    left.plot(epochs, [h.train_loss for h in history], marker="o")
    left.set_xlabel("epoch")
    left.set_ylabel("train loss")
    for values, label in (
        ([h.val_accuracy for h in history], "accuracy"),
        ([h.val_balanced_accuracy for h in history], "balanced accuracy"),
    ):
        right.plot(epochs, values, marker="o", label=label)
    right.set_xlabel("epoch")
    right.set_ylabel("validation")
    right.legend()
    for ax in (left, right):
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return True
