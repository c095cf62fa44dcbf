"""One entry point for every dataset format: `read_dataset(format, root, split, **options)`."""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ConfigError
from .affectnet import read_affectnet
from .carves import find_carve, read_carved
from .csv import read_csv_list
from .ferplus import read_ferplus
from .folder import read_folder
from .rafdb import read_rafdb
from .records import DatasetError, LabeledImages

READERS: dict[str, Callable[..., LabeledImages]] = {
    "ferplus": read_ferplus,
    "rafdb": read_rafdb,
    "affectnet": read_affectnet,
    "folder": read_folder,
    "csv": read_csv_list,
}


DEFAULT_SPLITS: dict[str, tuple[str, ...]] = {
    "ferplus": ("train", "valid", "test"),
    "rafdb": ("train", "test"),
    "affectnet": ("train", "val"),
    "folder": ("train", "valid", "test"),
    "csv": ("all",),
}


def parse_spec(spec: str, default_format: str | None = None) -> tuple[str, str]:
    """'FORMAT:ROOT' (e.g. 'ferplus:../shared/datasets/ferplus') -> (format, root)."""
    head, sep, tail = spec.partition(":")
    if sep and head in READERS:
        return head, tail
    if default_format is None:
        raise DatasetError(
            f"{spec!r}: give the dataset as FORMAT:ROOT, FORMAT one of {sorted(READERS)}"
        )
    return default_format, spec


def read_dataset(format: str, root: str | Path, split: str, **options: Any) -> LabeledImages:
    if format not in READERS:
        raise DatasetError(f"unknown dataset format {format!r}; choose from {sorted(READERS)}")
    reader = READERS[format]
    # A misspelt option should say which options exist, not raise a bare TypeError.
    parameters = inspect.signature(reader).parameters
    known = [n for n in parameters if n not in ("root", "split")]
    takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values())
    unknown = sorted(set(options) - set(known))
    if unknown and not takes_any:
        raise DatasetError(f"{format} reader: unknown option(s) {unknown}; it takes {known}")
    carve = find_carve(format, root)  # a dev split held out of train: train never holds it
    try:
        if carve is not None:
            return read_carved(carve, root, split, lambda name: reader(root, name, **options))
        return reader(root, split, **options)
    except UnicodeDecodeError as exc:  # a Latin-1 label or list file, say
        raise DatasetError(
            f"{format} {split} in {root}: a label or list file is not UTF-8 text ({exc.reason} "
            f"at byte {exc.start})"
        ) from exc


def stratified_split(
    data: LabeledImages, fraction: float, seed: int
) -> tuple[LabeledImages, LabeledImages]:
    """Carve a validation split (the same fraction of every class) out of a training split."""
    if not 0 < fraction < 1:
        raise ConfigError(f"validation fraction must be in (0, 1), got {fraction}")
    rng = np.random.default_rng(seed)
    held = []
    for c in range(data.num_classes):
        members = np.flatnonzero(data.labels == c)
        # Keep at least one image of every class for training (rounding could take them all).
        take = min(round(len(members) * fraction), len(members) - 1) if len(members) else 0
        held.extend(rng.permutation(members)[:take].tolist())
    held_mask = np.zeros(len(data), dtype=bool)
    held_mask[held] = True
    train = data.subset(np.flatnonzero(~held_mask))
    val = data.subset(np.flatnonzero(held_mask))
    return train, dataclasses.replace(val, split=f"{data.split}-heldout")
