"""`EpochRecord`: what one finished epoch measured, as one typed value.

The trainer makes one per epoch; checkpoints keep them (as plain data, so older checkpoints
still resume), `metrics.jsonl` holds one per line, and the plots, `tools/ship_model.py` and the
ablation report read them back with `read_history` instead of indexing dicts by key.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import TrainingError
from .metrics import Metrics

HISTORY_FILE = "metrics.jsonl"


@dataclass(frozen=True)
class HeldOut:
    """A held-out slice of an extra training source: reported, never selected on."""

    accuracy: float
    balanced_accuracy: float
    macro_f1: float
    images: int


@dataclass(frozen=True)
class EpochRecord:
    """One line of metrics.jsonl; `epoch` counts from 1."""

    epoch: int
    train_loss: float
    val_accuracy: float
    val_balanced_accuracy: float
    val_macro_f1: float
    k: tuple[float, ...]  # 1 + tanh(theta) per scale (empty for the baseline)
    # Training steps only, not validation; None when this process trained no step of the epoch
    # (resumed after its last step): the rate was not measured, it was not zero.
    images_per_second: float | None
    epoch_seconds: float
    skipped_images: int
    classes: tuple[str, ...] = ()
    confusion: tuple[tuple[int, ...], ...] = ()  # validation, rows = true class
    val_sources: dict[str, HeldOut] = dataclasses.field(default_factory=dict)

    @classmethod
    def measured(
        cls,
        *,
        epoch: int,
        train_loss: float,
        metrics: Metrics,
        held_out: dict[str, Metrics],
        k: list[float],
        images: int,
        seconds: float,
        skipped_images: int,
    ) -> EpochRecord:
        """The record of an epoch from its validation metrics and held-out slices."""
        return cls(
            epoch=epoch,
            train_loss=train_loss,
            val_accuracy=metrics.accuracy,
            val_balanced_accuracy=metrics.balanced_accuracy,
            val_macro_f1=metrics.macro_f1,
            k=tuple(k),
            images_per_second=images / max(seconds, 1e-9) if images else None,
            epoch_seconds=seconds,
            skipped_images=skipped_images,
            classes=tuple(metrics.classes),
            confusion=tuple(tuple(int(v) for v in row) for row in metrics.confusion.tolist()),
            val_sources={
                name: HeldOut(m.accuracy, m.balanced_accuracy, m.macro_f1, int(m.confusion.sum()))
                for name, m in held_out.items()
            },
        )

    @property
    def metrics(self) -> Metrics:
        """The validation metrics, rebuilt from the confusion matrix."""
        return Metrics(self.classes, np.asarray(self.confusion, dtype=np.int64))

    def to_dict(self) -> dict[str, Any]:
        """Plain data: a metrics.jsonl line, and what checkpoints store."""
        data = dataclasses.asdict(self)
        data["k"], data["classes"] = list(self.k), list(self.classes)
        data["confusion"] = [list(row) for row in self.confusion]
        if not self.val_sources:
            del data["val_sources"]
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> EpochRecord:
        """A record from `to_dict`'s data (a metrics.jsonl line or a checkpoint's history)."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise TrainingError(f"epoch record: unknown keys {unknown}")
        values = {"skipped_images": 0, **data}  # not counted by the first runs
        values["k"] = tuple(values.get("k", ()))
        values["classes"] = tuple(values.get("classes", ()))
        values["confusion"] = tuple(tuple(row) for row in values.get("confusion", ()))
        sources = values.get("val_sources") or {}
        values["val_sources"] = {name: HeldOut(**held) for name, held in sources.items()}
        return cls(**values)


def best_epoch(history: list[EpochRecord]) -> EpochRecord:
    """The epoch a run selects: the highest validation accuracy, the first of equals."""
    return max(history, key=lambda record: record.val_accuracy)


def read_history(run_dir: Path) -> list[EpochRecord]:
    """A run's records, from its metrics.jsonl."""
    lines = (Path(run_dir) / HISTORY_FILE).read_text(encoding="utf-8").splitlines()
    return [EpochRecord.from_dict(json.loads(line)) for line in lines if line.strip()]


def history_text(history: list[EpochRecord]) -> str:
    """metrics.jsonl's contents for these records."""
    return "".join(json.dumps(record.to_dict()) + "\n" for record in history)
