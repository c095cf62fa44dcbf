"""Training on several datasets at once: each source with its own reader, class mapping,
framing and sampling weight, combined into one training set the branch sampler draws from.

A source's classes are mapped by name onto the model's classes (the main dataset's); classes
mapped to nothing are dropped and counted. Its images are re-framed on decoding (`framing`, the
centred square kept, as a fraction of the shorter side) so that faces cropped differently from
the main dataset look like what the model sees at inference; a source of whole photos can
instead be cut by a face detector (`detector`), exactly as inference cuts them. `weight` is how
often each of its images is drawn as an anchor relative to an image of the main dataset. A
seeded, stratified `val_fraction` of a source is held out and reported beside the main
validation split (a second view of generalisation). `ratings` turns observer ratings into soft
targets (`data/ratings.py`).
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ConfigError
from ..inference.detectors import NAMES as DETECTOR_NAMES
from ..inference.detectors import is_detector_name
from .datasets import read_dataset, stratified_split
from .ratings import blend_ratings
from .records import DatasetError, LabeledImages


@dataclass
class SourceConfig:
    """One additional training dataset (see the module docstring)."""

    format: str
    root: str
    name: str | None = None  # how logs and metrics call it (default: the format)
    split: str = "train"
    options: dict[str, Any] = field(default_factory=dict)  # reader options
    class_map: dict[str, str | None] = field(default_factory=dict)  # source -> model class
    include: list[str] = field(default_factory=list)  # file-name patterns kept (empty: all)
    exclude: list[str] = field(default_factory=list)  # file-name patterns left out ("ffhq_*")
    framing: float = 1.0  # centred square kept, as a fraction of the shorter side
    # Whole photos read through this face detector and cropped as `qcsfer predict` crops them
    # (data/detected_faces.py); `framing` is then the fallback where it finds no face.
    detector: str | None = None
    weight: float = 1.0  # anchor sampling weight of each image, relative to the main dataset
    val_fraction: float = 0.0  # held out (seeded, stratified) and reported, never selected on
    # Observer ratings (a CSV of per-file class proportions, relative to `root`) blended with
    # the label as a soft target: ratings_weight * ratings + (1 - ratings_weight) * label.
    ratings: str | None = None
    ratings_weight: float = 0.5

    def __post_init__(self) -> None:
        if not 0 < self.framing <= 2:
            raise ConfigError(f"source {self.label}: framing must be in (0, 2], got {self.framing}")
        if self.detector is not None and not is_detector_name(self.detector):
            raise ConfigError(
                f"source {self.label}: unknown detector {self.detector!r}: give one of "
                f"{', '.join(DETECTOR_NAMES)} or a Haar cascade XML file"
            )
        if not self.weight > 0:
            raise ConfigError(f"source {self.label}: weight must be positive, got {self.weight}")
        if not 0 <= self.val_fraction < 1:
            raise ConfigError(
                f"source {self.label}: val_fraction must be in [0, 1), got {self.val_fraction}"
            )

    @property
    def label(self) -> str:
        return self.name or self.format


def read_source(
    source: SourceConfig, classes: tuple[str, ...], seed: int
) -> tuple[LabeledImages, LabeledImages | None]:
    """A source's training records in the model's classes, and its held-out slice (or None)."""
    records = read_dataset(source.format, source.root, source.split, **source.options)
    records = _select_files(records, source.include, source.exclude)
    records = map_classes(records, classes, source.class_map, source.label)
    if source.ratings:
        ratings = Path(source.root) / source.ratings
        records = blend_ratings(records, ratings, source.ratings_weight, source.label)
    if not source.val_fraction:
        return records, None
    return stratified_split(records, source.val_fraction, seed)


def map_classes(
    records: LabeledImages,
    classes: tuple[str, ...],
    class_map: dict[str, str | None],
    label: str,
) -> LabeledImages:
    """Relabel onto `classes` by name (a class_map entry renames; None drops the class)."""
    unknown = sorted(set(class_map) - set(records.classes))
    if unknown:
        raise DatasetError(f"source {label}: class_map names unknown class(es) {unknown}")
    target = {c: class_map.get(c, c) for c in records.classes}
    missing = sorted(t for c, t in target.items() if t is not None and t not in classes)
    if missing and any(c not in class_map for c in records.classes if target[c] in missing):
        raise DatasetError(
            f"source {label}: class(es) {missing} are not model classes {list(classes)}; "
            "rename them in class_map (or map them to null to drop them)"
        )
    ids = np.array([classes.index(t) if t in classes else -1 for t in target.values()])
    new_labels = ids[records.labels]
    keep = np.flatnonzero(new_labels >= 0)
    notes = dict(records.notes)
    if len(keep) < len(records):
        notes["dropped: class mapped to nothing"] = len(records) - len(keep)
    return LabeledImages(
        name=label,
        split=records.split,
        classes=classes,
        paths=tuple(records.paths[i] for i in keep),
        labels=new_labels[keep],
        notes=notes,
    )


def _select_files(records: LabeledImages, include: list[str], exclude: list[str]) -> LabeledImages:
    """Keep files whose names match an `include` pattern (if any) and no `exclude` pattern."""
    if not include and not exclude:
        return records

    def matches(name: str, patterns: list[str]) -> bool:
        return any(fnmatch.fnmatch(name, pattern) for pattern in patterns)

    keep = [
        i
        for i, p in enumerate(records.paths)
        if (not include or matches(p.name, include)) and not matches(p.name, exclude)
    ]
    subset = records.subset(keep)
    subset.notes["left out by file-name pattern"] = len(records) - len(keep)
    return subset


def combine(parts: list[LabeledImages]) -> LabeledImages:
    """One training set from records that share their classes; hard labels become one-hot soft
    labels where any part has soft labels (FERPlus vote distributions beside other sources)."""
    classes = parts[0].classes
    if any(p.classes != classes for p in parts):
        raise DatasetError("sources to combine must share the model's classes")
    soft = None
    if any(p.soft_labels is not None for p in parts):
        eye = np.eye(len(classes), dtype=np.float32)
        soft = np.concatenate(
            [p.soft_labels if p.soft_labels is not None else eye[p.labels] for p in parts]
        )
    notes: dict[str, int] = {}
    for p in parts:
        for reason, count in p.notes.items():
            notes[f"{p.name}: {reason}"] = count
    return LabeledImages(
        name="+".join(p.name for p in parts),
        split=parts[0].split,
        classes=classes,
        paths=tuple(path for p in parts for path in p.paths),
        labels=np.concatenate([p.labels for p in parts]),
        soft_labels=soft,
        notes=notes,
    )
