"""FERPlus (FER+ labels on FER2013 faces) in the layout the FER+ tooling writes.

    ROOT/FER2013Train|FER2013Valid|FER2013Test/label.csv + PNG files

label.csv has no header: file name, face box, then 10 vote counts (neutral, happiness,
surprise, sadness, anger, disgust, fear, contempt, unknown, NF).
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Literal

import numpy as np

from .records import DatasetError, LabeledImages, check_files_exist, check_folder

CLASSES = ("neutral", "happiness", "surprise", "sadness", "anger", "disgust", "fear", "contempt")
SPLITS = {"train": "FER2013Train", "valid": "FER2013Valid", "test": "FER2013Test"}
NUM_VOTES = 10  # 8 emotions + unknown + not-a-face

LabelMode = Literal["majority", "probability"]


def process_votes(votes: np.ndarray, mode: LabelMode) -> np.ndarray | None:
    """The FER+ rule for one image's 10 votes -> a distribution over the 8 classes, or None.

    Single votes are outliers and removed first. `majority` keeps the image only if the top
    count is more than half of the remaining votes (one-hot result). `probability` follows the
    FER+ crossentropy/probability rule: take the top-voted emotions (ties together) until they
    hold 75% of the votes, at most 3 of them, stopping at unknown/NF; discard the image if the
    kept emotions hold no more than half of the votes or more than 3 were needed. Either way an
    image whose label would be unknown or NF is discarded.
    """
    remaining = np.where(votes <= 1, 0, votes).astype(np.float64)
    total = remaining.sum()
    kept = np.zeros(NUM_VOTES)
    if mode == "majority":
        top = int(np.argmax(remaining))
        if total <= 0 or remaining[top] <= total / 2:
            return None
        kept[top] = 1.0
    else:
        taken, count, valid = 0.0, 0, True
        while taken < 0.75 * total and count < 3 and valid:
            peak = remaining.max()
            for i in range(NUM_VOTES):
                if remaining[i] != peak:
                    continue
                kept[i], remaining[i] = peak, 0.0
                taken += peak
                count += 1
                if i >= len(CLASSES):  # unknown/NF among the top votes ends the search
                    valid = False
                    if kept.sum() > peak:  # emotions were taken before it: drop it
                        kept[i] = 0.0
                        count -= 1
                    break
        if kept.sum() <= 0.5 * total or count > 3:
            return None
    if int(np.argmax(kept)) >= len(CLASSES):
        return None
    return kept[: len(CLASSES)] / kept[: len(CLASSES)].sum()


def read_ferplus(
    root: str | Path, split: str = "train", label_mode: LabelMode = "majority"
) -> LabeledImages:
    root = Path(root)
    if split not in SPLITS:
        raise DatasetError(f"FERPlus split must be one of {sorted(SPLITS)}, got {split!r}")
    if label_mode not in ("majority", "probability"):
        raise DatasetError(
            f"FERPlus label mode must be majority or probability, got {label_mode!r}"
        )
    check_folder(root, "FERPlus root")
    folder = root / SPLITS[split]
    label_file = folder / "label.csv"
    if not label_file.is_file():
        raise DatasetError(f"FERPlus {split}: missing {label_file}")

    paths, labels, soft, dropped = [], [], [], 0
    with label_file.open(newline="") as f:
        for line_no, row in enumerate(csv.reader(f), start=1):
            if not row:
                continue
            if len(row) != 2 + NUM_VOTES:
                raise DatasetError(f"{label_file}:{line_no}: expected 12 fields, got {len(row)}")
            try:
                votes = np.array([int(v) for v in row[2:]])
            except ValueError as exc:
                raise DatasetError(f"{label_file}:{line_no}: vote counts must be integers") from exc
            if (votes < 0).any():
                raise DatasetError(f"{label_file}:{line_no}: negative vote count")
            distribution = process_votes(votes, label_mode)
            if distribution is None:
                dropped += 1
                continue
            paths.append(folder / row[0])
            labels.append(int(np.argmax(distribution)))
            soft.append(distribution)
    check_files_exist(paths, f"FERPlus {split} ({label_file})")
    return LabeledImages(
        name="ferplus",
        split=split,
        classes=CLASSES,
        paths=tuple(paths),
        labels=np.asarray(labels, dtype=np.int64),
        soft_labels=np.asarray(soft, dtype=np.float32).reshape(-1, len(CLASSES))
        if label_mode == "probability"
        else None,
        notes={"discarded by the FER+ rule": dropped},
    )
