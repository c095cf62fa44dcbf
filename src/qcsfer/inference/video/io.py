"""Reading videos frame by frame (files or cameras) and writing annotated copies.

Frames are decoded one at a time and handed on; nothing keeps them, so memory does not grow
with the video's length. Frames that are not sampled are only grabbed (decoded, never
converted). A frame that fails to decode in the middle of a file is counted and skipped; a file
that ends before the frame count its header declares is reported as truncated.
"""

from __future__ import annotations

import logging
import math
import os
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ...errors import UsageError
from ...imaging import MAX_PIXELS, ImageError, ImageTooLarge
from .live import NewestFrame

log = logging.getLogger(__name__)

VIDEO_SUFFIXES = frozenset(
    {".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg", ".wmv", ".flv"}
)
WEBCAM = re.compile(r"webcam:(\d+)")  # a camera by OpenCV index, e.g. webcam:0
MAX_BAD_RUN = 25  # consecutive undecodable frames before a file counts as ended


def is_video(path: str | os.PathLike[str]) -> bool:
    return bool(WEBCAM.fullmatch(os.fspath(path))) or Path(path).suffix.lower() in VIDEO_SUFFIXES


@dataclass
class ReadStats:
    """What reading a video met: frames decoded and sampled, corrupt ones, where it ended."""

    fps: float = 25.0
    declared: int | None = None  # frame count in the file's header (None for cameras)
    first: int = 0  # index of the first frame read (--start)
    last: int | None = None  # index after the last frame wanted (--end), if known
    decoded: int = 0
    sampled: int = 0
    corrupt: int = 0
    dropped: int = 0  # live sources: frames the camera gave that were not analysed
    live: bool = False
    position: int = 0  # index of the next frame
    started: float = 0.0  # time.monotonic() when reading began

    @property
    def truncated(self) -> bool:
        """The file ended (not at --end) more than a frame before its declared length."""
        if self.declared is None:
            return False
        wanted = self.declared if self.last is None else min(self.last, self.declared)
        return self.position < wanted - 1

    def rate(self) -> float:
        """Frames read per second of wall time so far (live: frames analysed)."""
        elapsed = time.monotonic() - self.started
        done = self.sampled if self.live else self.position - self.first
        return done / elapsed if elapsed > 0 else 0.0

    def eta(self) -> float | None:
        """Seconds left at the current rate, when the end is known."""
        end = self.last if self.last is not None else self.declared
        rate = self.rate()
        if end is None or rate <= 0:
            return None
        return max(0, end - self.position) / rate

    def progress(self) -> str:
        """`frame 1200/7500, 48.2 frames/s, ETA 2:10` for a progress line."""
        end = self.last if self.last is not None else self.declared
        text = f"frame {self.position}" + (f"/{end}" if end else "")
        text += f", {self.rate():.1f} frames/s"
        if self.live:
            text += f" analysed, {self.dropped} dropped"
        eta = self.eta()
        if eta is not None:
            minutes, seconds = divmod(round(eta), 60)
            text += f", ETA {minutes // 60}:{minutes % 60:02d}:{seconds:02d}"
        return text

    def problems(self) -> list[str]:
        """What went wrong while reading, one phrase each (empty when nothing did)."""
        out = []
        if self.corrupt:
            out.append(f"{self.corrupt} undecodable frame(s) skipped")
        if self.truncated:
            out.append(
                f"ended after {self.position} of the {self.declared} frames its header "
                "declares (truncated file?)"
            )
        return out


@dataclass(frozen=True)
class Sampled:
    """One sampled frame: its index, time in seconds and BGR pixels."""

    index: int
    time: float
    bgr: np.ndarray


class FrameReader:
    """Sampled frames of a video file or camera, between `start` and `end` seconds.

    Sampling: every Nth frame (`every`), or frames `1 / fps` seconds apart (`fps`, by the
    video's timestamps; never more often than the video's own rate). Iterating raises ImageError
    when the source cannot be read at all, and ImageTooLarge for frames of more than
    `max_pixels` (default: the image limit, `imaging.MAX_PIXELS`), told by the header before
    any frame is decoded; `stats` tells what was met.
    """

    def __init__(
        self,
        source: str | os.PathLike[str],
        *,
        every: int = 1,
        fps: float | None = None,
        start: float = 0.0,
        end: float | None = None,
        max_pixels: int | None = None,
    ) -> None:
        if every < 1:
            raise UsageError("every must be >= 1")
        if fps is not None and not 0 < fps < math.inf:  # also refuses nan
            raise UsageError(f"fps must be a finite number > 0, got {fps}")
        if not 0 <= start < math.inf:  # also refuses nan
            raise UsageError(f"start must be a finite number of seconds >= 0, got {start}")
        if end is not None and not start < end < math.inf:
            raise UsageError(f"need start < end, a finite number of seconds; got {start}, {end}")
        self.source = os.fspath(source)
        self.camera = WEBCAM.fullmatch(self.source)
        self.every = every
        self.sample_fps = fps
        self.start = start
        self.end = end
        self.max_pixels = MAX_PIXELS if max_pixels is None else max_pixels
        self.stats = ReadStats()

    @property
    def step(self) -> float:
        """Seconds between sampled frames (nominal)."""
        if self.sample_fps is not None:
            return max(1.0 / self.sample_fps, 1.0 / self.stats.fps)
        return self.every / self.stats.fps

    def __iter__(self) -> Iterator[Sampled]:
        import cv2

        if self.camera is None and not os.path.isfile(self.source):
            raise ImageError(f"{self.source}: no such file")
        capture = cv2.VideoCapture(int(self.camera.group(1)) if self.camera else self.source)
        try:
            if not capture.isOpened():
                what = "cannot open the camera" if self.camera else "cannot read video"
                raise ImageError(f"{self.source}: {what}")
            yield from self._live(capture) if self.camera else self._frames(capture)
        finally:
            capture.release()

    def _frames(self, capture: Any) -> Iterator[Sampled]:
        import cv2

        stats = self.stats
        width = int(capture.get(cv2.CAP_PROP_FRAME_WIDTH))
        height = int(capture.get(cv2.CAP_PROP_FRAME_HEIGHT))
        self._check_size(width, height)  # from the header, before a frame is decoded
        stats.fps = capture.get(cv2.CAP_PROP_FPS) or 25.0
        if self.camera is None:
            stats.declared = int(capture.get(cv2.CAP_PROP_FRAME_COUNT)) or None
        stats.first = round(self.start * stats.fps)
        stats.last = None if self.end is None else math.ceil(self.end * stats.fps)
        if stats.first and not capture.set(cv2.CAP_PROP_POS_FRAMES, stats.first):
            for _ in range(stats.first):  # no seeking in this stream: read up to the start
                capture.grab()
        stats.position = stats.first
        stats.started = time.monotonic()
        camera_start = time.monotonic()
        next_time = self.start
        bad_run = 0
        while stats.last is None or stats.position < stats.last:
            seconds = stats.position / stats.fps
            if self.camera is not None:
                seconds = time.monotonic() - camera_start
            wanted = self._wanted(stats.position, seconds, next_time)
            ok = capture.grab()
            frame = None
            if ok and wanted:
                ok, frame = capture.retrieve()
                ok = ok and frame is not None and frame.size > 0
            if not ok:
                at_end = stats.declared is not None and stats.position >= stats.declared
                if at_end or bad_run >= MAX_BAD_RUN:
                    break
                bad_run += 1  # counted with the position it moves past
                stats.position += 1
                continue
            if bad_run:  # a run of bad frames with good ones after it: corrupt, not the end
                stats.corrupt += bad_run
                log.warning("%s: skipped %d undecodable frame(s)", self.source, bad_run)
                bad_run = 0
            stats.decoded += 1
            stats.position += 1
            if wanted:
                self._check_size(frame.shape[1], frame.shape[0])  # a header that said less
                stats.sampled += 1
                if self.sample_fps is not None:
                    next_time = max(next_time + 1.0 / self.sample_fps, seconds)
                yield Sampled(stats.position - 1, seconds, frame)
        stats.position -= bad_run  # trailing failures are where the file ended
        if stats.decoded == 0:
            what = "the camera gave" if self.camera else "the video has"
            after = f" after {self.start:g} s" if self.start else ""
            raise ImageError(f"{self.source}: {what} no decodable frame{after}")

    def _live(self, capture: Any) -> Iterator[Sampled]:
        """The camera's newest frames, read in a thread: frames there was no time for are
        dropped, so the analysis never falls behind the camera (`live.py`)."""
        import cv2

        stats = self.stats
        stats.live = True
        self._check_size(
            int(capture.get(cv2.CAP_PROP_FRAME_WIDTH)), int(capture.get(cv2.CAP_PROP_FRAME_HEIGHT))
        )
        stats.fps = capture.get(cv2.CAP_PROP_FPS) or 25.0
        reader = NewestFrame(capture)
        stats.started = time.monotonic()
        reader.start()
        try:
            index, next_time = -1, self.start
            while (got := reader.newest(index + self.every - 1)) is not None:
                index, arrived, frame = got
                seconds = arrived - stats.started
                stats.position = stats.decoded = reader.read_count
                if self.end is not None and seconds >= self.end:
                    break
                if seconds < next_time:
                    continue
                if self.sample_fps is not None:
                    next_time = max(next_time + 1.0 / self.sample_fps, seconds)
                self._check_size(frame.shape[1], frame.shape[0])
                stats.sampled += 1
                stats.dropped = stats.decoded - stats.sampled
                yield Sampled(index, seconds, frame)
        finally:
            reader.stop()
            stats.position = stats.decoded = reader.read_count
            stats.dropped = stats.decoded - stats.sampled
        if stats.decoded == 0:
            raise ImageError(f"{self.source}: the camera gave no decodable frame")

    def _check_size(self, width: int, height: int) -> None:
        """Refuse frames over the pixel limit: decoding one 100-megapixel frame takes 1.4 GB."""
        if width * height > self.max_pixels:
            raise ImageTooLarge(
                f"{self.source}: video frames too large ({width} x {height} = {width * height} "
                f"pixels > {self.max_pixels})"
            )

    def _wanted(self, index: int, seconds: float, next_time: float) -> bool:
        if self.sample_fps is not None:
            return seconds + 0.5 / self.stats.fps >= next_time
        return (index - self.stats.first) % self.every == 0


def open_writer(path: Path, fps: float, size: tuple[int, int]) -> tuple[Any, Path]:
    """`path` + .mp4 (mp4v), or + .avi (MJPG) where the OpenCV build lacks an MP4 encoder."""
    import cv2

    for fourcc, suffix in (("mp4v", ".mp4"), ("MJPG", ".avi")):
        target = path.with_name(path.name + suffix)
        writer = cv2.VideoWriter(os.fspath(target), cv2.VideoWriter_fourcc(*fourcc), fps, size)
        if writer.isOpened():
            return writer, target
        writer.release()
    raise UsageError(f"{path}: OpenCV cannot write video here (neither mp4v nor MJPG)")
