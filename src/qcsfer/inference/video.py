"""Video input: predictions on every Nth frame, optionally an annotated copy of the video."""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..imaging import ImageError
from .annotate import annotate
from .recognizer import ExpressionRecognizer, ImageResult, Prediction

VIDEO_SUFFIXES = frozenset(
    {".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg", ".wmv", ".flv"}
)


WEBCAM = re.compile(r"webcam:(\d+)")  # a camera by OpenCV index, e.g. webcam:0


def is_video(path: str | os.PathLike[str]) -> bool:
    return bool(WEBCAM.fullmatch(os.fspath(path))) or Path(path).suffix.lower() in VIDEO_SUFFIXES


def _open_writer(path: Path, fps: float, size: tuple[int, int]) -> tuple[Any, Path]:
    """`path` + .mp4 (mp4v), or + .avi (MJPG) where the OpenCV build lacks an MP4 encoder."""
    import cv2

    for fourcc, suffix in (("mp4v", ".mp4"), ("MJPG", ".avi")):
        target = path.with_name(path.name + suffix)
        writer = cv2.VideoWriter(os.fspath(target), cv2.VideoWriter_fourcc(*fourcc), fps, size)
        if writer.isOpened():
            return writer, target
        writer.release()
    raise RuntimeError(f"{path}: OpenCV cannot write video here (neither mp4v nor MJPG)")


class VideoPredictions:
    """Iterate to get one ImageResult per sampled frame (frames 0, every, 2 * every, ...).

    With `out` (a path without suffix: the codec available picks it), every frame is written
    annotated with the latest sampled frame's results, so the video keeps its length and speed;
    `written` is the file's path once iteration has finished. Iterating raises ImageError when
    the file is not a readable video.
    """

    def __init__(
        self,
        recognizer: ExpressionRecognizer,
        path: str | os.PathLike[str],
        *,
        every: int = 1,
        out: str | os.PathLike[str] | None = None,
        boxes: Sequence[Sequence[float]] | None = None,
        progress: Callable[[int, int | None], None] | None = None,
    ) -> None:
        if every < 1:
            raise ValueError("every must be >= 1")
        self.recognizer = recognizer
        self.path = os.fspath(path)
        self.every = every
        self.out = Path(out) if out is not None else None
        self.boxes = boxes
        self.progress = progress
        self.written: Path | None = None

    def __iter__(self) -> Iterator[ImageResult]:
        import cv2

        camera = WEBCAM.fullmatch(self.path)
        if camera is None and not os.path.isfile(self.path):
            raise ImageError(f"{self.path}: no such file")
        # A camera streams until it stops or the user interrupts (Ctrl-C).
        capture = cv2.VideoCapture(int(camera.group(1)) if camera else self.path)
        writer = None
        try:
            ok, frame = capture.read() if capture.isOpened() else (False, None)
            if not ok:
                what = "cannot open the camera" if camera else "cannot read video"
                raise ImageError(f"{self.path}: {what} (no decodable frame)")
            total = int(capture.get(cv2.CAP_PROP_FRAME_COUNT)) or None
            fps = capture.get(cv2.CAP_PROP_FPS) or 25.0
            latest: list[Prediction] = []
            index = 0
            while ok:
                if index % self.every == 0:
                    result = self.recognizer.predict_frame(
                        frame, source=self.path, frame=index, color="bgr", boxes=self.boxes
                    )
                    latest = result.predictions
                    if self.progress is not None:
                        self.progress(index, total)
                    yield result
                if self.out is not None:
                    if writer is None:
                        height, width = frame.shape[:2]
                        writer, self.written = _open_writer(self.out, fps, (width, height))
                    rgb = np.ascontiguousarray(frame[:, :, ::-1])
                    writer.write(np.ascontiguousarray(annotate(rgb, latest)[:, :, ::-1]))
                ok, frame = capture.read()
                index += 1
        finally:
            capture.release()
            if writer is not None:
                writer.release()
