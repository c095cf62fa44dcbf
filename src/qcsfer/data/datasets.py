"""One entry point for every dataset format: `read_dataset(format, root, split, **options)`."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from .ferplus import read_ferplus
from .records import DatasetError, LabeledImages

READERS: dict[str, Callable[..., LabeledImages]] = {
    "ferplus": read_ferplus,
}


def read_dataset(format: str, root: str | Path, split: str, **options: Any) -> LabeledImages:
    if format not in READERS:
        raise DatasetError(f"unknown dataset format {format!r}; choose from {sorted(READERS)}")
    return READERS[format](root, split, **options)


def stratified_split(
    data: LabeledImages, fraction: float, seed: int
) -> tuple[LabeledImages, LabeledImages]:
    """Carve a validation split (the same fraction of every class) out of a training split."""
    if not 0 < fraction < 1:
        raise ValueError(f"validation fraction must be in (0, 1), got {fraction}")
    rng = np.random.default_rng(seed)
    held = []
    for c in range(data.num_classes):
        members = np.flatnonzero(data.labels == c)
        take = int(round(len(members) * fraction)) if len(members) > 1 else 0
        held.extend(rng.permutation(members)[:take].tolist())
    held_mask = np.zeros(len(data), dtype=bool)
    held_mask[held] = True
    train = data.subset(np.flatnonzero(~held_mask))
    val = data.subset(np.flatnonzero(held_mask))
    return train, LabeledImages(
        name=val.name, split=f"{data.split}-heldout", classes=val.classes, paths=val.paths,
        labels=val.labels, soft_labels=val.soft_labels, notes=val.notes,
    )
