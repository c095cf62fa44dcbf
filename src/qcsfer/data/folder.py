"""Any dataset stored as one folder per class: ROOT[/<split>]/<class>/**/<image>.

If ROOT/<split>/ exists it is the tree for that split (ROOT/train/happy/..., ROOT/test/...).
If ROOT has no split folders at all, ROOT itself is the tree whatever split is asked for (so
carve validation from it); if it has some split folders but not the asked one, that is an
error rather than silently reading another split.

Classes are the sub-folder names sorted, unless the `classes` option (a list, or a
comma-separated string) fixes their order; then every sub-folder must be one of them, and a
listed class without a folder is an empty class. Pass `classes` when splits may differ in which
classes they hold, so their ids agree. Empty classes are left to the trainer's
`check_classes`, since evaluation may look at partial splits.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ..imaging import IMAGE_SUFFIXES
from .records import DatasetError, LabeledImages, check_folder

log = logging.getLogger(__name__)

SPLIT_FOLDERS = frozenset({"train", "training", "val", "valid", "validation", "test", "testing"})

ClassesOption = str | Sequence[str] | None


def parse_classes(classes: ClassesOption, where: str) -> tuple[str, ...] | None:
    """The `classes` option (list or 'a,b,c') as a tuple of unique, non-empty names."""
    if classes is None:
        return None
    names = classes.split(",") if isinstance(classes, str) else list(classes)
    if not all(isinstance(n, str) for n in names):
        raise DatasetError(f"{where}: classes must be names (strings), got {list(names)!r}")
    names = [n.strip() for n in names]
    if not names or any(not n for n in names):
        raise DatasetError(f"{where}: classes must be non-empty names, got {classes!r}")
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise DatasetError(f"{where}: classes listed twice: {duplicates}")
    return tuple(names)


def _visible_dirs(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


def _images_under(folder: Path) -> list[Path]:
    """Image files below `folder`, sorted, skipping hidden files and folders."""
    found = []
    for path in folder.rglob("*"):
        relative = path.relative_to(folder).parts
        if any(part.startswith(".") for part in relative):
            continue
        if path.suffix.lower() in IMAGE_SUFFIXES and path.is_file():
            found.append(path)
    return sorted(found)


def split_tree(root: Path, split: str) -> Path:
    """The folder holding the class folders of `split`."""
    if (root / split).is_dir():
        return root / split
    present = sorted(p.name for p in _visible_dirs(root) if p.name.lower() in SPLIT_FOLDERS)
    if present:
        raise DatasetError(
            f"folder dataset {root}: no {split!r} folder (split folders present: {present})"
        )
    log.info("folder dataset %s has no split folders: using the whole tree as %r", root, split)
    return root


def read_folder(
    root: str | Path, split: str = "train", classes: ClassesOption = None
) -> LabeledImages:
    root = Path(root)
    check_folder(root, "folder dataset root")
    tree = split_tree(root, split)
    fixed = parse_classes(classes, f"folder dataset {tree}")
    folders = {p.name: p for p in _visible_dirs(tree)}
    if fixed is None:
        if not folders:
            raise DatasetError(f"folder dataset {tree}: no class folders")
        names = tuple(sorted(folders))
    else:
        unknown = sorted(set(folders) - set(fixed))
        if unknown:
            raise DatasetError(
                f"folder dataset {tree}: folder(s) {unknown} are not in classes {list(fixed)}"
            )
        names = fixed

    paths: list[Path] = []
    labels: list[int] = []
    for label, name in enumerate(names):
        if name in folders:
            found = _images_under(folders[name])
            paths += found
            labels += [label] * len(found)
    if not paths:
        raise DatasetError(
            f"folder dataset {tree}: no images ({', '.join(sorted(IMAGE_SUFFIXES))})"
        )
    loose = sum(1 for p in tree.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    return LabeledImages(
        name="folder",
        split=split,
        classes=names,
        paths=tuple(paths),
        labels=np.asarray(labels, dtype=np.int64),
        notes={"images outside class folders, ignored": loose} if loose else {},
    )
