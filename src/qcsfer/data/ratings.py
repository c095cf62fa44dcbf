"""Observer ratings as soft targets: how people read each face, blended with its posed label.

Posed datasets (tcce) label each photo with the expression the performer was asked to pose; a
panel of observers says what they see, and for some poses (fear) they mostly see something
else. Training on `weight * ratings + (1 - weight) * one-hot(posed)` keeps the posed label as
the anchor while teaching the model the ambiguity people perceive. Rows whose posed class the
panel could not choose (tcce's observers had no neutral option) keep their hard label.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

from .records import DatasetError, LabeledImages

MAX_RATINGS_BYTES = 64 << 20


def read_ratings(path: Path, classes: tuple[str, ...]) -> tuple[dict[str, np.ndarray], list[str]]:
    """File name -> proportions over `classes` (0 for classes not rated), and the rated classes.

    The CSV has a `file` column and one column per rated class, named as the model's classes;
    other columns are ignored. Rows are normalised to sum to 1; all-zero rows are left out.
    """
    if not path.is_file():
        raise DatasetError(f"ratings file {path} does not exist")
    if path.stat().st_size > MAX_RATINGS_BYTES:
        raise DatasetError(f"ratings file {path} is larger than 64 MiB")
    with path.open(newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        header = reader.fieldnames or []
        if "file" not in header:
            raise DatasetError(f"{path}: the ratings CSV needs a 'file' column, got {header}")
        rated = [c for c in classes if c in header]
        if not rated:
            raise DatasetError(f"{path}: no column is one of the classes {list(classes)}")
        table: dict[str, np.ndarray] = {}
        for line, row in enumerate(reader, start=2):
            row_values = np.zeros(len(classes), np.float32)
            try:
                for c in rated:
                    row_values[classes.index(c)] = float(row[c])
            except (TypeError, ValueError):
                raise DatasetError(f"{path}:{line}: ratings must be numbers") from None
            if not np.all(np.isfinite(row_values)) or row_values.min() < 0:
                raise DatasetError(f"{path}:{line}: ratings must be finite and non-negative")
            if row_values.sum() > 0:
                table[row["file"]] = row_values / row_values.sum()
    return table, rated


def blend_ratings(
    records: LabeledImages, ratings_path: Path, weight: float, label: str
) -> LabeledImages:
    """Soft labels `weight * ratings + (1 - weight) * one-hot(label)`, hard where unrated."""
    if not 0 <= weight <= 1:
        raise DatasetError(f"source {label}: ratings_weight must be in [0, 1], got {weight}")
    table, rated = read_ratings(ratings_path, records.classes)
    eye = np.eye(records.num_classes, dtype=np.float32)
    soft = eye[records.labels] if records.soft_labels is None else records.soft_labels.copy()
    blended = unrated_class = no_rating = 0
    for i, (path, target) in enumerate(zip(records.paths, records.labels, strict=True)):
        if records.classes[target] not in rated:
            unrated_class += 1
        elif path.name not in table:
            no_rating += 1
        else:
            soft[i] = weight * table[path.name] + (1 - weight) * eye[target]
            blended += 1
    notes = dict(records.notes)
    notes["soft label from ratings"] = blended
    if unrated_class:
        notes["hard label: posed class not rated"] = unrated_class
    if no_rating:
        notes["hard label: no rating row"] = no_rating
    return LabeledImages(
        name=records.name,
        split=records.split,
        classes=records.classes,
        paths=records.paths,
        labels=records.labels,
        soft_labels=soft,
        notes=notes,
    )
