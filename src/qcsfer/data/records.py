"""What every dataset reader produces: labelled image records with a fixed class list."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import DatasetError


@dataclass(frozen=True)
class LabeledImages:
    """One split of a dataset: image paths, integer labels and (optionally) soft labels.

    `soft_labels` (N x K, rows sum to 1) exists where the dataset has vote distributions
    (FERPlus). Every class in `classes` is a valid id; a class may be empty in a split, but
    `check_classes` says so before training.
    """

    name: str
    split: str
    classes: tuple[str, ...]
    paths: tuple[Path, ...]
    labels: np.ndarray  # int64, N
    soft_labels: np.ndarray | None = None  # float32, N x K
    notes: dict[str, int] = field(default_factory=dict)  # counts of dropped rows, by reason

    def __post_init__(self) -> None:
        n = len(self.paths)
        if self.labels.shape != (n,):
            raise DatasetError(
                f"{self.name}/{self.split}: {n} paths but labels {self.labels.shape}"
            )
        if n and (self.labels.min() < 0 or self.labels.max() >= len(self.classes)):
            raise DatasetError(
                f"{self.name}/{self.split}: label ids must be in 0..{len(self.classes) - 1}"
            )
        if self.soft_labels is not None and self.soft_labels.shape != (n, len(self.classes)):
            raise DatasetError(f"{self.name}/{self.split}: soft labels {self.soft_labels.shape}")

    def __len__(self) -> int:
        return len(self.paths)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def class_counts(self) -> np.ndarray:
        return np.bincount(self.labels, minlength=self.num_classes)

    def check_classes(self) -> None:
        """Fail if a class has no image: it could neither be learned nor sampled."""
        empty = [c for c, n in zip(self.classes, self.class_counts(), strict=True) if n == 0]
        if empty:
            raise DatasetError(f"{self.name}/{self.split}: no images for class(es) {empty}")

    def subset(self, indices: Sequence[int] | np.ndarray) -> LabeledImages:
        indices = np.asarray(indices, dtype=np.int64)
        return LabeledImages(
            name=self.name,
            split=self.split,
            classes=self.classes,
            paths=tuple(self.paths[i] for i in indices),
            labels=self.labels[indices],
            soft_labels=None if self.soft_labels is None else self.soft_labels[indices],
            notes=dict(self.notes),
        )


def check_files_exist(paths: Sequence[Path], where: str) -> None:
    """One message for all missing images: how many, and the first few."""
    missing = [p for p in paths if not p.is_file()]
    if missing:
        examples = ", ".join(str(p) for p in missing[:3])
        raise DatasetError(
            f"{where}: {len(missing)} of {len(paths)} images are missing, e.g. {examples}"
        )


def check_folder(root: Path, what: str) -> None:
    """A dataset folder that is missing, or is a file (a list file given as the root, say)."""
    if not root.is_dir():
        state = "is a file, not a folder" if root.exists() else "does not exist"
        raise DatasetError(f"{what} {root} {state}")
