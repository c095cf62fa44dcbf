"""RAF-DB (basic expression set) in the layout of its official release.

    ROOT/EmoLabel/list_patition_label.txt      lines `train_00001.jpg 5`, `test_0001.jpg 1`
    ROOT/Image/aligned/train_00001_aligned.jpg  (variant="aligned", the 100x100 faces)
    ROOT/Image/original/train_00001.jpg         (variant="original")

The split is the file-name prefix (train/test); RAF-DB has no validation split, so select
models on a split carved from train. Labels 1..7 (surprise ... neutral) become ids 0..6.
An empty class is not an error here: the trainer calls `check_classes` on what it trains on,
while evaluation and `qcsfer data` may legitimately look at partial copies.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import numpy as np

from .records import DatasetError, LabeledImages, check_files_exist, check_folder

CLASSES = ("surprise", "fear", "disgust", "happiness", "sadness", "anger", "neutral")
SPLITS = ("train", "test")
LABEL_FILE = Path("EmoLabel") / "list_patition_label.txt"  # sic: the release's spelling

Variant = Literal["aligned", "original"]


def image_path(root: Path, name: str, variant: Variant) -> Path:
    """Where the release keeps one listed image."""
    if variant == "aligned":
        return root / "Image" / "aligned" / f"{Path(name).stem}_aligned.jpg"
    return root / "Image" / "original" / name


def read_rafdb(
    root: str | Path, split: str = "train", variant: Variant = "aligned"
) -> LabeledImages:
    root = Path(root)
    if split not in SPLITS:
        hint = (
            " (it has none: carve one from train, e.g. val_split: null)"
            if split in ("val", "valid", "validation")
            else ""
        )
        raise DatasetError(f"RAF-DB split must be one of {list(SPLITS)}, got {split!r}{hint}")
    if variant not in ("aligned", "original"):
        raise DatasetError(f"RAF-DB variant must be aligned or original, got {variant!r}")
    check_folder(root, "RAF-DB root")
    label_file = root / LABEL_FILE
    if not label_file.is_file():
        raise DatasetError(f"RAF-DB {split}: missing label file {label_file}")

    paths: list[Path] = []
    labels: list[int] = []
    with label_file.open(encoding="utf-8-sig") as f:
        for line_no, line in enumerate(f, start=1):
            fields = line.split()
            if not fields:
                continue
            where = f"{label_file}:{line_no}"
            if len(fields) != 2:
                raise DatasetError(f"{where}: expected `<image> <label>`, got {line.strip()!r}")
            name, raw = fields
            prefix = name.split("_", 1)[0]
            if prefix not in SPLITS:
                raise DatasetError(
                    f"{where}: image name {name!r} starts with neither train_ nor test_"
                )
            try:
                label = int(raw)
            except ValueError as exc:
                raise DatasetError(f"{where}: label {raw!r} is not an integer") from exc
            if not 1 <= label <= len(CLASSES):
                raise DatasetError(f"{where}: label {label} is outside 1..{len(CLASSES)}")
            if prefix == split:
                paths.append(image_path(root, name, variant))
                labels.append(label - 1)
    check_files_exist(paths, f"RAF-DB {split} ({label_file}, {variant} images)")
    return LabeledImages(
        name="rafdb",
        split=split,
        classes=CLASSES,
        paths=tuple(paths),
        labels=np.asarray(labels, dtype=np.int64),
    )
