"""What a split holds, summarised so that a resumed run can tell whether its data changed.

A fingerprint counts the images per class and hashes every (file, label) pair, with paths
relative to the dataset root (so a dataset moved together with `data.root` is still the same
data). Comparing two fingerprints says what changed in words: how many images, which classes.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

from .records import LabeledImages


def fingerprint(records: LabeledImages, root: str | os.PathLike[str]) -> dict[str, Any]:
    base = Path(root) if Path(root).is_dir() else Path(root).parent  # csv: the list's folder
    digest = hashlib.sha256()
    for path, label in zip(records.paths, records.labels.tolist(), strict=True):
        digest.update(os.fsencode(os.path.relpath(path, base)) + f"\0{label}\n".encode())
    if records.soft_labels is not None:
        digest.update(records.soft_labels.tobytes())
    return {
        "images": len(records),
        "classes": list(records.classes),
        "class_counts": records.class_counts().tolist(),
        "sha256": digest.hexdigest(),
    }


def describe_change(split: str, before: dict[str, Any], now: dict[str, Any]) -> str | None:
    """None when the fingerprints agree, else what changed, e.g. 'train: 384 -> 380 images'."""
    if before == now:
        return None
    changes = []
    if before["images"] != now["images"]:
        changes.append(f"{before['images']} -> {now['images']} images")
    if before["classes"] != now["classes"]:
        changes.append(f"classes {before['classes']} -> {now['classes']}")
    else:
        counts = zip(now["classes"], before["class_counts"], now["class_counts"], strict=True)
        changes += [f"{name} {old} -> {new}" for name, old, new in counts if old != new]
    if not changes:
        changes.append("the same counts, but other files or labels")
    return f"{split}: {', '.join(changes)}"
