"""Any dataset given as a list file of `path,label` rows (CSV, TSV or semicolon-separated).

`root` is the list file itself; a `{split}` in it is replaced by the split name, so
`lists/{split}.csv` serves train and validation from one setting. The delimiter is sniffed
(tab, comma or semicolon, whichever every leading row uses consistently). Bytes that are not
UTF-8 are kept as the OS would give them (surrogate escapes), so such file names still open.
A first row whose
path has no image suffix and whose label is not an integer is a header (or force it with
`header=True/False`); a header may name the path/label columns among others.

Labels are class names or integer ids. With ids the `classes` option (list or 'a,b,c') is
required to name them; with names it is optional and fixes the order (else sorted names).
Image paths are relative to the list file's folder, or to `image_root` when given. Empty
classes are left to the trainer's `check_classes`.
"""

from __future__ import annotations

import csv as _csv
from pathlib import Path

import numpy as np

from ..imaging import IMAGE_SUFFIXES
from .folder import ClassesOption, parse_classes
from .records import DatasetError, LabeledImages, check_files_exist

DELIMITERS = ("\t", ",", ";")
SNIFF_ROWS = 20
PATH_NAMES = frozenset(
    {"path", "file", "filename", "file_name", "filepath", "file_path", "image", "image_path", "img"}
)
LABEL_NAMES = frozenset(
    {"label", "class", "class_name", "expression", "emotion", "target", "category"}
)


def sniff_delimiter(list_file: Path) -> str:
    """The delimiter every leading row uses the same number of times (else: one they all use)."""
    with list_file.open(encoding="utf-8-sig", errors="surrogateescape") as f:
        sample = []  # (line number, text)
        for number, line in enumerate(f, start=1):
            if line.strip():
                sample.append((number, line))
                if len(sample) == SNIFF_ROWS:
                    break
    if not sample:
        raise DatasetError(f"{list_file}: the list file is empty")
    counts = {d: [line.count(d) for _, line in sample] for d in DELIMITERS}
    for d in DELIMITERS:
        if min(counts[d]) >= 1 and len(set(counts[d])) == 1:
            return d
    for d in DELIMITERS:
        if min(counts[d]) >= 1:
            return d
    common = max(DELIMITERS, key=lambda d: sum(c >= 1 for c in counts[d]))
    number = next(n for n, line in sample if common not in line)  # the row that breaks it
    raise DatasetError(f"{list_file}:{number}: no tab, comma or semicolon between path and label")


def _is_int(text: str) -> bool:
    try:
        int(text)
    except ValueError:
        return False
    return True


def _looks_like_header(row: list[str]) -> bool:
    return Path(row[0].strip()).suffix.lower() not in IMAGE_SUFFIXES and not _is_int(row[1].strip())


def _header_columns(names: list[str], where: str) -> tuple[int, int]:
    lowered = [n.strip().lower() for n in names]
    if len(lowered) == 2:
        return 0, 1
    path = next((i for i, n in enumerate(lowered) if n in PATH_NAMES), None)
    label = next((i for i, n in enumerate(lowered) if n in LABEL_NAMES), None)
    if path is None or label is None:
        raise DatasetError(
            f"{where}: cannot tell the path and label columns of header {names}; "
            f"name them one of {sorted(PATH_NAMES)} and {sorted(LABEL_NAMES)}"
        )
    return path, label


def read_csv_list(
    root: str | Path,
    split: str = "train",
    classes: ClassesOption = None,
    image_root: str | Path | None = None,
    header: bool | None = None,
) -> LabeledImages:
    list_file = Path(str(root).replace("{split}", split))
    if not list_file.is_file():
        raise DatasetError(f"CSV dataset {split}: missing list file {list_file}")
    fixed = parse_classes(classes, f"CSV dataset {list_file}")
    base = list_file.parent
    if image_root is not None:
        base = Path(str(image_root).replace("{split}", split))
        if not base.is_dir():
            raise DatasetError(f"CSV dataset {list_file}: image_root {base} does not exist")

    rows: list[tuple[int, str, str]] = []  # line number, path, raw label
    with list_file.open(encoding="utf-8-sig", errors="surrogateescape", newline="") as f:
        reader = _csv.reader(f, delimiter=sniff_delimiter(list_file))
        columns, width = (0, 1), 2
        first = True
        for row in reader:
            line_no = reader.line_num
            if not any(field.strip() for field in row):
                continue
            where = f"{list_file}:{line_no}"
            if first:
                first = False
                is_header = (
                    header if header is not None else len(row) >= 2 and _looks_like_header(row)
                )
                if is_header:
                    columns, width = _header_columns(row, where), len(row)
                    continue
            if len(row) != width:
                raise DatasetError(
                    f"{where}: expected {width} fields (path, label), got {len(row)}: {row}"
                )
            path, label = row[columns[0]].strip(), row[columns[1]].strip()
            if not path or not label:
                raise DatasetError(f"{where}: empty path or label")
            rows.append((line_no, path, label))
    if not rows:
        raise DatasetError(f"{list_file}: no image rows")

    if fixed is None:
        for line_no, _, label in rows:
            if _is_int(label):
                raise DatasetError(
                    f"{list_file}:{line_no}: label {label!r} is an integer id; "
                    "pass the classes option to name the ids"
                )
        fixed = tuple(sorted({label for _, _, label in rows}))
    ids = {name: i for i, name in enumerate(fixed)}

    paths: list[Path] = []
    labels: list[int] = []
    for line_no, path, label in rows:
        if label in ids:
            labels.append(ids[label])
        elif _is_int(label):
            if not 0 <= int(label) < len(fixed):
                raise DatasetError(
                    f"{list_file}:{line_no}: label {label} is outside 0..{len(fixed) - 1}"
                )
            labels.append(int(label))
        else:
            raise DatasetError(
                f"{list_file}:{line_no}: unknown class {label!r} (classes: {list(fixed)})"
            )
        paths.append(base / path)
    check_files_exist(paths, f"CSV dataset {split} ({list_file})")
    return LabeledImages(
        name="csv",
        split=split,
        classes=fixed,
        paths=tuple(paths),
        labels=np.asarray(labels, dtype=np.int64),
    )
