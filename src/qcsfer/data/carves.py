"""Development splits carved out of datasets that ship without one, defined here once.

affectnet-web has only `train/`. Its development split (`dev`) is a fixed, seeded 5% of every
class, and it exists only here: `read_dataset` answers the `dev` split with the carve and the
`train` split with everything else, so no recipe, source or command that reads affectnet-web
through the data layer can train on the faces the generalization suite
(`benchmarks/generalization.py`) measures on.

Which files are held out does not depend on the order files are listed in or on files added
elsewhere: within each class, files are ranked by a keyed hash of their path relative to the
split folder, and the first `fraction` of each class is the carve. A dataset is recognised by
its folder name (as given or after resolving links) or by the title of its README, so a renamed
copy that keeps its README is carved the same way.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .records import LabeledImages


@dataclass(frozen=True)
class Carve:
    """A development split held out of one split of a dataset."""

    dataset: str  # the dataset's folder name and README title
    format: str  # the reader it is read with
    source_split: str  # the split it is carved from
    split: str  # the name it is read by
    fraction: float  # of every class
    seed: int

    def members(self, records: LabeledImages, tree: Path) -> np.ndarray:
        """Boolean mask over `records`: True for the carve (at least one image of a class with
        two or more, never all of a class)."""
        held = np.zeros(len(records), dtype=bool)
        for c in range(records.num_classes):
            members = np.flatnonzero(records.labels == c)
            if len(members) < 2:
                continue
            take = min(len(members) - 1, max(1, round(len(members) * self.fraction)))
            ranked = sorted(members, key=lambda i: self._rank(records.paths[i], tree))
            held[ranked[:take]] = True
        return held

    def _rank(self, path: Path, tree: Path) -> str:
        """The file's place in the ranking: a hash of its path below the split folder (or
        below the dataset folder, for a tree without split folders)."""
        relative = path.as_posix()
        for base in (tree, tree.parent):
            if path.is_relative_to(base):
                relative = path.relative_to(base).as_posix()
                break
        return hashlib.sha256(f"{self.dataset}:{self.seed}:{relative}".encode()).hexdigest()


CARVES: tuple[Carve, ...] = (
    Carve("affectnet-web", "folder", "train", "dev", fraction=0.05, seed=26),
)


def find_carve(format: str, root: str | Path) -> Carve | None:
    """The carve of the dataset at `root`, read with `format`; None if it has none."""
    root = Path(root)
    names = {root.name, root.resolve().name, _readme_title(root)}
    return next((c for c in CARVES if c.format == format and c.dataset in names), None)


def read_carved(
    carve: Carve, root: str | Path, split: str, read: Callable[[str], LabeledImages]
) -> LabeledImages:
    """`split` of a carved dataset: the carve itself, its source split without the carve, or
    any other split as the reader gives it."""
    if split not in (carve.split, carve.source_split):
        return read(split)
    records = read(carve.source_split)
    held = carve.members(records, Path(root) / carve.source_split)
    if split == carve.split:
        return dataclasses.replace(records.subset(np.flatnonzero(held)), split=carve.split)
    kept = records.subset(np.flatnonzero(~held))
    kept.notes[f"held out as the {carve.split!r} split (data/carves.py)"] = int(held.sum())
    return kept


def _readme_title(root: Path) -> str | None:
    """The first word of README.md's '# ' title line, if there is one."""
    try:
        with (root / "README.md").open(encoding="utf-8", errors="replace") as f:
            first = f.readline()
    except OSError:
        return None
    if not first.startswith("# "):
        return None
    words = first[2:].split()
    return words[0].rstrip(":") if words else None
