"""Output paths checked before the work starts, and write failures that name the file and why.

A command that works for minutes must not fail at its end because `--out` names a file, a
folder that cannot be created or written, or a full disk. The checks create nothing, so a
command refused later (or interrupted) leaves no empty folders behind.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

from .errors import QcsferError

MIN_FREE_BYTES = 1 << 20  # below this a folder counts as full: nothing useful fits any more


class OutputError(QcsferError, RuntimeError):
    """An output that cannot be written; the message names the file and says why."""


def reason(exc: OSError) -> str:
    """'No space left on device' rather than '[Errno 28] No space left on device: path'."""
    return exc.strerror or str(exc)


def _existing_ancestor(path: Path) -> Path:
    for candidate in (path, *path.absolute().parents):
        if candidate.exists():
            return candidate
    return Path(path.anchor or ".")  # unreachable: the root exists


def _check_writable(folder: Path, label: Path) -> None:
    """Files can be created in `folder` (a probe, as permissions lie for root) and it has space."""
    try:
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as exc:
        raise OutputError(f"{label}: cannot write there ({reason(exc)})") from exc
    free = shutil.disk_usage(folder).free
    if free < MIN_FREE_BYTES:
        raise OutputError(f"{label}: disk full ({free} bytes free in {folder})")


def check_output_folder(path: str | os.PathLike[str]) -> Path:
    """A folder to write into: it exists or can be created, is writable and not full."""
    path = Path(path)
    ancestor = _existing_ancestor(path)
    if not ancestor.is_dir():
        what = "exists and is not a folder" if ancestor == path else f"{ancestor} is a file"
        raise OutputError(f"{path}: {what} (the output needs a folder)")
    _check_writable(ancestor, path)
    return path


def check_output_file(path: str | os.PathLike[str]) -> Path:
    """A file to write: not a folder, and its folder can be written."""
    path = Path(path)
    if path.is_dir():
        raise OutputError(f"{path}: is a folder (give a file name, e.g. {path / 'model'}...)")
    check_output_folder(path.parent)
    return path


def check_not_an_input(
    output: str | os.PathLike[str], inputs: Iterable[str | os.PathLike[str] | None]
) -> Path:
    """Refuse an output file that is one of the command's inputs (the same file by any path
    or link): writing it would destroy what is being read, e.g. `export W --out W`."""
    output = Path(output)
    for given in inputs:
        if given is None:
            continue
        source = Path(given)
        with contextlib.suppress(OSError):  # either one missing: they cannot be the same
            if os.path.samefile(output, source):
                raise OutputError(
                    f"{output}: is also an input of this command ({source}); writing it would "
                    "replace what is being read: write to another file"
                )
    return output


@contextmanager
def writing(path: str | os.PathLike[str]) -> Iterator[None]:
    """Turn an OSError raised while writing `path` into an OutputError that names it."""
    try:
        yield
    except OSError as exc:
        raise OutputError(f"{path}: cannot write ({reason(exc)})") from exc
