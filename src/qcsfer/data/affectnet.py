"""AffectNet from a list file: the official CSV or a plain `relative/path label` list.

`root` is the image folder (the official `Manually_Annotated_Images`). The list file is
`list_file` (a path, a path with `{split}` in it, or a mapping split -> path; relative paths
that do not exist as given are looked up under ROOT), by default ROOT/training.csv for train
and ROOT/validation.csv for val/valid. Recognised list styles, by their first line:

- official CSV with its header (`subDirectory_filePath`, ..., `expression`, ...);
- official CSV without a header (the released validation.csv): path in column 0,
  expression in column 6; or any headerless `path,label` CSV;
- whitespace list `relative/path label` (the path may contain spaces).

Expression ids: 0 neutral, 1 happy, 2 sad, 3 surprise, 4 fear, 5 disgust, 6 anger,
7 contempt; 8 none, 9 uncertain and 10 no-face are dropped (counted in `notes`), and so is
contempt when num_classes=7. Empty classes are left to the trainer's `check_classes`.
"""

from __future__ import annotations

import csv
from collections.abc import Iterator, Mapping
from pathlib import Path

import numpy as np

from .records import DatasetError, LabeledImages, check_files_exist, check_folder

CLASSES = ("neutral", "happy", "sad", "surprise", "fear", "disgust", "anger", "contempt")
DEFAULT_LISTS = {"train": "training.csv", "val": "validation.csv", "valid": "validation.csv"}
PATH_COLUMN, LABEL_COLUMN = "subDirectory_filePath", "expression"
HEADERLESS_COLUMNS = {2: (0, 1)}  # field count -> (path, label); 7 or more: official order
OFFICIAL_COLUMNS = (0, 6)
NON_EMOTIONS = {8: "none", 9: "uncertain", 10: "no-face"}
CONTEMPT = 7

ListFile = str | Path | Mapping[str, str | Path]


def resolve_list_file(root: Path, split: str, list_file: ListFile | None) -> Path:
    """The list file for one split, from the option or the official default name."""
    if list_file is None:
        if split not in DEFAULT_LISTS:
            raise DatasetError(
                f"AffectNet split {split!r} has no default list file "
                f"(defaults: {DEFAULT_LISTS}); pass the list_file option"
            )
        return root / DEFAULT_LISTS[split]
    if isinstance(list_file, Mapping):
        if split not in list_file:
            raise DatasetError(
                f"AffectNet list_file has no entry for split {split!r}: {dict(list_file)}"
            )
        list_file = list_file[split]
    path = Path(str(list_file).replace("{split}", split))
    if not path.is_absolute() and not path.exists() and (root / path).exists():
        path = root / path
    return path


def _rows(list_file: Path) -> Iterator[tuple[int, str, str]]:
    """(line number, relative path, raw label) for every non-blank row, in any list style."""
    with list_file.open(encoding="utf-8-sig", newline="") as f:
        first = next((line for line in f if line.strip()), "")
    if "," not in first:
        with list_file.open(encoding="utf-8-sig") as f:
            for line_no, line in enumerate(f, start=1):
                if not line.strip():
                    continue
                fields = line.rsplit(None, 1)
                if len(fields) != 2:
                    got = line.strip()
                    raise DatasetError(
                        f"{list_file}:{line_no}: expected `relative/path label`, got {got!r}"
                    )
                yield line_no, fields[0].strip(), fields[1]
        return

    with list_file.open(encoding="utf-8-sig", newline="") as f:
        reader = csv.reader(f)
        columns: tuple[int, int] | None = None
        width = 0
        for row in reader:
            line_no = reader.line_num
            if not any(field.strip() for field in row):
                continue
            if columns is None:
                names = [field.strip() for field in row]
                if PATH_COLUMN in names:
                    if LABEL_COLUMN not in names:
                        raise DatasetError(
                            f"{list_file}:{line_no}: header has no {LABEL_COLUMN!r} column"
                        )
                    columns = (names.index(PATH_COLUMN), names.index(LABEL_COLUMN))
                    width = len(row)
                    continue
                width = len(row)
                columns = HEADERLESS_COLUMNS.get(width, OFFICIAL_COLUMNS if width >= 7 else None)
                if columns is None:
                    raise DatasetError(
                        f"{list_file}:{line_no}: expected `path,label` or the official AffectNet "
                        f"columns, got {width} fields"
                    )
            if len(row) != width:
                raise DatasetError(
                    f"{list_file}:{line_no}: expected {width} fields, got {len(row)}"
                )
            yield line_no, row[columns[0]].strip(), row[columns[1]]


def read_affectnet(
    root: str | Path,
    split: str = "train",
    list_file: ListFile | None = None,
    num_classes: int = 8,
) -> LabeledImages:
    root = Path(root)
    if num_classes not in (7, 8):
        raise DatasetError(f"AffectNet num_classes must be 7 or 8, got {num_classes!r}")
    check_folder(root, "AffectNet image root")
    path = resolve_list_file(root, split, list_file)
    if not path.is_file():
        raise DatasetError(f"AffectNet {split}: missing list file {path}")

    paths: list[Path] = []
    labels: list[int] = []
    dropped = dict.fromkeys(NON_EMOTIONS, 0)
    contempt_dropped = 0
    for line_no, relative, raw in _rows(path):
        where = f"{path}:{line_no}"
        if not relative:
            raise DatasetError(f"{where}: empty image path")
        try:
            label = int(raw.strip())
        except ValueError as exc:
            raise DatasetError(f"{where}: expression {raw.strip()!r} is not an integer") from exc
        if not 0 <= label <= max(NON_EMOTIONS):
            raise DatasetError(f"{where}: expression {label} is outside 0..{max(NON_EMOTIONS)}")
        if label in NON_EMOTIONS:
            dropped[label] += 1
        elif label == CONTEMPT and num_classes == 7:
            contempt_dropped += 1
        else:
            paths.append(root / relative)
            labels.append(label)
    check_files_exist(paths, f"AffectNet {split} ({path})")

    notes = {f"dropped as {name} ({code})": dropped[code] for code, name in NON_EMOTIONS.items()}
    if num_classes == 7:
        notes[f"dropped as contempt ({CONTEMPT}) for 7 classes"] = contempt_dropped
    return LabeledImages(
        name="affectnet",
        split=split,
        classes=CLASSES[:num_classes],
        paths=tuple(paths),
        labels=np.asarray(labels, dtype=np.int64),
        notes=notes,
    )
