"""What `qcsfer predict` reads: files, folders, glob patterns, videos and cameras, expanded."""

from __future__ import annotations

import glob
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from ..imaging import IMAGE_SUFFIXES
from .video.io import VIDEO_SUFFIXES, WEBCAM, is_video


@dataclass(frozen=True)
class Input:
    """One expanded input: an image or video path, or a pattern/path that matched nothing."""

    path: str
    kind: Literal["image", "video", "missing"]


def expand_inputs(items: Sequence[str], exclude: Path | None = None) -> list[Input]:
    """Files as given; folders recursively (images and videos, sorted); glob patterns expanded.

    Folders and patterns skip what lies under `exclude` (the output folder: annotated images
    written inside an input folder are not read back as inputs on the next run).
    """
    skip = exclude.resolve() if exclude is not None else None

    def wanted(found: Path) -> bool:
        return skip is None or not found.resolve().is_relative_to(skip)

    out: list[Input] = []
    for item in items:
        path = Path(item)
        if WEBCAM.fullmatch(item):
            out.append(Input(item, "video"))
        elif path.is_dir():
            found = sorted(
                p
                for p in path.rglob("*")
                if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES | VIDEO_SUFFIXES and wanted(p)
            )
            out += [_classify(str(p)) for p in found]
        elif path.exists():
            out.append(_classify(item))
        elif glob.has_magic(item):
            matches = sorted(
                m for m in glob.glob(item, recursive=True) if os.path.isfile(m) and wanted(Path(m))
            )
            out += [_classify(m) for m in matches] or [Input(item, "missing")]
        else:
            out.append(Input(item, "missing"))
    return out


def _classify(path: str) -> Input:
    return Input(path, "video" if is_video(path) else "image")
