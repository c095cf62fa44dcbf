"""Video: faces tracked over sampled frames, per-frame and smoothed expressions, streamed.

What is video here: faces found on each sampled frame with track ids (`detect.py`:
detection on a downscaled copy, bridged by the tracker between detections), per-track smoothed
probabilities (smoothing.py), one VideoFrame per sampled frame. Cropping and classifying are
the recognizer's (`prepare`, `classify`), several frames' faces in one batch. Frames are not
kept once their results are out, so memory stays flat on long videos; cameras work the same
way (`webcam:N`), reading only the newest frame (`live.py`).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from ...errors import QcsferError, UsageError
from ..faces import DEFAULT_MARGIN, Detector
from ..model_input import FaceBatch, in_batches
from ..results import ImageResult, Prediction
from .detect import DETECT_INTERVAL, DETECT_SIDE, Downscaled, FaceFinder, Found
from .io import FrameReader, ReadStats, Sampled
from .smoothing import ProbabilitySmoother
from .tracking import Tracker


class FrameRecognizer(Protocol):
    """The steps of a recognizer that a video runs on each frame (`ExpressionRecognizer`'s).
    The recognizer offers `video()`, so it imports this module; this module needs only these
    steps, so it does not import the recognizer back."""

    classes: list[str]
    batch_size: int
    detector: Detector | None

    def prepare(
        self,
        image: np.ndarray,
        *,
        boxes: Sequence[Sequence[float]] | None = None,
        detector: Detector | None = None,
    ) -> FaceBatch: ...

    def classify(self, batches: Sequence[FaceBatch]) -> list[list[Prediction]]: ...


@dataclass(frozen=True)
class TrackedPrediction(Prediction):
    """A face in a video: `label`, `confidence` and `probabilities` are the track's smoothed
    values; `raw` holds this frame's own probabilities; `track` the face's id."""

    track: int = 0
    raw: dict[str, float] = field(default_factory=dict)

    @property
    def raw_label(self) -> str:
        return max(self.raw, key=self.raw.__getitem__)

    def to_dict(self) -> dict[str, Any]:
        return {
            "track": self.track,
            **super().to_dict(),
            "raw_label": self.raw_label,
            "raw_probabilities": dict(self.raw),
        }


@dataclass
class VideoFrame(ImageResult):
    """One sampled frame: its index, time in seconds and TrackedPredictions."""

    time: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        record = super().to_dict()
        return {"file": record.pop("file"), "frame": self.frame, "time": self.time, **record}


@dataclass
class _Frame:
    index: int  # the frame's index and time (its decoded BGR pixels are not kept: `_prepare`)
    time: float
    rgb: np.ndarray
    faces: FaceBatch
    tracks: list[int]  # the track id of each face
    alive: set[int]  # the tracks alive at this frame (smoothing state kept for these)


class VideoAnalysis:
    """Iterate to get one VideoFrame per sampled frame, in order, with tracked faces.

    every / fps: sample every Nth frame, or F frames per second; start / end: seconds; tau:
    smoothing time constant in seconds; max_gap: seconds a face may go unseen and keep its id;
    detect_side: detection on frames downscaled to this longer side; detect_interval: seconds
    between full-frame detections, the tracker bridging the frames in between (None: 0.1 s
    for BlazeFace, 0 = every frame for other detectors); detect_every: or full-frame detection
    on every Nth sampled frame (1: every frame; not with detect_interval); batch_frames: frames
    whose faces are classified together (1 for cameras: no delay); keep_images: put each
    frame's RGB pixels in VideoFrame.image (for annotated videos). `stats` (ReadStats) tells
    what reading met: corrupt frames skipped, truncation. Raises ImageError when the video
    cannot be read at all.
    """

    def __init__(
        self,
        recognizer: FrameRecognizer,
        source: str | os.PathLike[str],
        *,
        every: int = 1,
        fps: float | None = None,
        start: float = 0.0,
        end: float | None = None,
        tau: float = 0.5,
        max_gap: float = 1.5,
        detect_side: int = DETECT_SIDE,
        detect_interval: float | None = None,
        detect_every: int | None = None,
        batch_frames: int | None = None,
        boxes: Sequence[Sequence[float]] | None = None,
        keep_images: bool = False,
        progress: Callable[[ReadStats], None] | None = None,
    ) -> None:
        if detect_side < 32:
            raise UsageError(f"detect_side must be >= 32 pixels, got {detect_side}")
        self.recognizer = recognizer
        self.source = os.fspath(source)
        self.reader = FrameReader(source, every=every, fps=fps, start=start, end=end)
        self.tracker = Tracker(max_gap=max_gap)
        self.smoother = ProbabilitySmoother(tau)
        detector = recognizer.detector
        self.detector = None if detector is None else Downscaled(detector, detect_side)
        if detect_interval is not None and detect_every is not None:
            raise UsageError("give the detection interval in seconds or in frames, not both")
        if detect_interval is None:  # bridging pays where detection is most of the work
            fast = getattr(detector, "name", "").startswith("blazeface")
            detect_interval = DETECT_INTERVAL if fast else 0.0
        finder = None if boxes is not None else self.detector
        self.finder = FaceFinder(finder, self.tracker, detect_interval, every=detect_every)
        camera = self.reader.camera is not None
        self.batch_frames = batch_frames or (1 if camera else 8)
        self.boxes = boxes
        self.keep_images = keep_images
        self.progress = progress

    @property
    def stats(self) -> ReadStats:
        return self.reader.stats

    @property
    def step(self) -> float:
        """Seconds between sampled frames."""
        return self.reader.step

    def __iter__(self) -> Iterator[VideoFrame]:
        frames = (self._prepare(sampled) for sampled in self.reader)
        size, most = self.recognizer.batch_size, self.batch_frames
        for group in in_batches(frames, lambda frame: len(frame.faces), size, most):
            predictions = self.recognizer.classify([frame.faces for frame in group])
            for frame, found in zip(group, predictions, strict=True):
                result = self._frame(frame, found)
                if self.progress is not None:
                    self.progress(self.stats)
                yield result

    def _prepare(self, sampled: Sampled) -> _Frame:
        """Find (or bridge) this frame's faces, track them and crop them for the model."""
        import cv2

        rgb = cv2.cvtColor(sampled.bgr, cv2.COLOR_BGR2RGB)
        try:
            if self.finder.detector is None:  # given boxes, or the whole frame
                faces = self.recognizer.prepare(rgb, boxes=self.boxes, detector=self.detector)
                found, ids = self.finder.find(rgb, sampled.time, faces.faces)
            else:
                found, ids = self.finder.find(rgb, sampled.time)
                detector = self.finder.detector
                known = Found(found, detector.name, getattr(detector, "margin", DEFAULT_MARGIN))
                faces = self.recognizer.prepare(rgb, detector=known)
        except QcsferError as exc:  # a given box outside the frame: say which video
            raise type(exc)(f"{self.source}: {exc}") from exc
        # Not the Sampled: up to `batch_frames` frames wait here for the model, and keeping each
        # one's BGR beside its RGB held 2.7 MB more per waiting 720p frame (issue 29).
        alive = set(self.tracker.tracks)
        return _Frame(sampled.index, sampled.time, rgb, faces, ids, alive)

    def _frame(self, item: _Frame, predictions: list[Prediction]) -> VideoFrame:
        """Track this frame's faces and smooth each track's probabilities."""
        height, width = item.rgb.shape[:2]
        frame = VideoFrame(
            self.source, width=width, height=height, frame=item.index, time=item.time
        )
        if self.keep_images:
            frame.image = item.rgb
        self.smoother.keep_only(item.alive)
        classes = self.recognizer.classes
        for face, track, raw in zip(item.faces.faces, item.tracks, predictions, strict=True):
            own = np.fromiter(raw.probabilities.values(), np.float64, len(classes))
            smoothed = self.smoother.update(track, item.time, own)
            best = Prediction.from_probabilities(face, smoothed, classes)
            frame.predictions.append(
                TrackedPrediction(**vars(best), track=track, raw=raw.probabilities)
            )
        return frame
