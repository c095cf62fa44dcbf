"""Finding the faces of successive video frames, with track ids, at a fraction of the cost.

Two savings, both measured on benchmarks/video.py (docs/benchmarks.md, "Video side by side"):
- Detection runs on a downscaled copy of the frame (`Downscaled`); a detector that letterboxes
  its input itself (BlazeFace: 128 or 256 px) gets the frame as it is, so it is resized once.
- Between detections the tracker bridges (`FaceFinder`): full-frame detection runs at most
  every `interval` seconds, and on the frames in between each face found by the last detection
  is moved on by its track's velocity. At 15 frames/s and 0.1 s that halves the detector's
  work; a face that appears is found within `interval` seconds. Bridged boxes never feed the
  tracker (its velocities come from detections only), so an error cannot compound.

Two rules keep faces where the full frame loses them (benchmarks/video_crossings.py): while two
tracks' faces are near each other (about to cross, or crossing) nothing is bridged; and a live
track that a full-frame detection missed (a small face, one half hidden by another) is searched
for in a region around where it is expected, which the detector sees at a higher resolution.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from ...errors import UsageError
from ..faces import DEFAULT_MARGIN, Detector, Face
from .tracking import Tracker, distinct, iou

DETECT_SIDE = 640  # detection runs on frames downscaled to at most this many pixels
# Seconds between full-frame detections when bridging (0: every frame). 0.1 s is every other
# frame at 15 frames/s, every third at 30; the tracks and labels of the benchmark video stay
# as they are with every frame detected (docs/benchmarks.md).
DETECT_INTERVAL = 0.1
# Faces whose boxes, each grown by this share of its side, overlap are "near": no bridging.
NEAR = 0.5
# A missed track is searched for in a square this many times its face's side.
SEARCH = 2.5


class Downscaled:
    """A detector run on a copy of the frame at most `side` pixels long; faces come back in
    full-frame pixels, one box per face (duplicates would start spurious tracks)."""

    def __init__(self, detector: Detector, side: int) -> None:
        self.detector = detector
        # A detector with a smaller input of its own (BlazeFace's `size`) downscales once.
        own = getattr(detector, "size", None)
        self.side = 0 if isinstance(own, int) and own <= side else side
        self.name = detector.name
        self.margin = getattr(detector, "margin", DEFAULT_MARGIN)  # crops as the detector's own

    def detect(self, rgb: np.ndarray) -> list[Face]:
        import cv2

        height, width = rgb.shape[:2]
        scale = min(1.0, self.side / max(height, width)) if self.side else 1.0
        if scale == 1.0:
            return distinct(self.detector.detect(rgb))
        size = (max(1, round(width * scale)), max(1, round(height * scale)))
        small = cv2.resize(rgb, size, interpolation=cv2.INTER_AREA)
        faces = distinct(self.detector.detect(small))
        return [_scaled(face, 1 / scale, width, height) for face in faces]


class Found:
    """Faces already found, as a detector (so `prepare` crops them with the detector's
    margin and keeps their landmarks)."""

    def __init__(self, faces: Sequence[Face], name: str, margin: float) -> None:
        self.faces = list(faces)
        self.name = name
        self.margin = margin

    def detect(self, rgb: np.ndarray) -> list[Face]:
        return self.faces


class FaceFinder:
    """Faces and their track ids, frame after frame (call `find` in time order).

    detector: run on full frames (None: `find` takes the boxes it is given); interval: seconds
    between full-frame detections, bridged by the tracker in between (0: detect every frame);
    every: or detect on every Nth frame (1: every frame), in place of `interval`; search: the
    crossing rules (no bridging while faces are near, missed tracks searched for around where
    they are expected).
    """

    def __init__(
        self,
        detector: Detector | None,
        tracker: Tracker,
        interval: float = 0.0,
        *,
        every: int | None = None,
        search: bool = True,
    ) -> None:
        if not 0 <= interval < float("inf"):
            raise UsageError(f"the detection interval must be finite seconds >= 0, got {interval}")
        whole = isinstance(every, int) and not isinstance(every, bool)
        if every is not None and (not whole or every < 1):
            raise UsageError(f"detect on every Nth frame needs a whole N >= 1, got {every!r}")
        self.detector = detector
        self.tracker = tracker
        self.interval = interval
        self.every = every
        self.search = search
        self.detections = 0  # frames the detector ran on (the others were bridged)
        self.searches = 0  # regions searched for missed tracks
        self._last: float | None = None  # time of the last detection
        self._since = 0  # frames since the last detection
        self._seen: dict[int, Face] = {}  # faces of the last detection, by track

    def find(
        self, rgb: np.ndarray, time: float, boxes: list[Face] | None = None
    ) -> tuple[list[Face], list[int]]:
        """This frame's faces (detected, given, or bridged) and the track id of each."""
        self._since += 1
        if boxes is None and self._bridging(time):
            return self._bridged(time, rgb.shape[1], rgb.shape[0])
        if boxes is None:
            assert self.detector is not None
            boxes = self.detector.detect(rgb)
            self.detections += 1
            if self.search:
                boxes = boxes + self._searched(rgb, time, boxes)
        ids = self.tracker.update(time, [face.box for face in boxes])
        self._last, self._since = time, 0
        self._seen = dict(zip(ids, boxes, strict=True))
        return boxes, ids

    def _bridging(self, time: float) -> bool:
        """Bridge when the last detection is recent and saw every live track, and no two
        faces are near: a track it missed (a face hidden by another, or missed once) is looked
        for on every frame until it is found again or its gap runs out."""
        if self.detector is None or self._last is None:
            return False
        if not self.tracker.tracks.keys() <= self._seen.keys():
            return False
        if self.search and self._near(time):
            return False
        if self.every is not None:
            return self._since < self.every
        return self.interval > 0 and time - self._last < self.interval - 1e-6

    def _expected(self, time: float) -> dict[int, tuple[float, float, float, float]]:
        """Where each live track's face is expected at `time`."""
        horizon = self.tracker.horizon
        return {i: track.predicted(time, horizon) for i, track in self.tracker.tracks.items()}

    def _near(self, time: float) -> bool:
        """Whether two live tracks' expected faces, each grown by NEAR of its side, overlap."""
        grown = [_grown(box, NEAR) for box in self._expected(time).values()]
        return any(iou(a, b) > 0 for k, a in enumerate(grown) for b in grown[k + 1 :])

    def _searched(self, rgb: np.ndarray, time: float, found: list[Face]) -> list[Face]:
        """Faces of live tracks that `found` missed, each looked for in a square around where
        its track expects it (only tracks seen twice: a one-off false face is not chased)."""
        assert self.detector is not None
        height, width = rgb.shape[:2]
        added: list[Face] = []
        for track_id, box in self._expected(time).items():
            track = self.tracker.tracks[track_id]
            side = max(box[2] - box[0], box[3] - box[1])
            cx, cy = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
            if track.hits < 2 or any(_holds(face, cx, cy, side / 2) for face in found + added):
                continue
            half = SEARCH * side / 2
            x0, y0 = max(0, round(cx - half)), max(0, round(cy - half))
            x1, y1 = min(width, round(cx + half)), min(height, round(cy + half))
            if x1 - x0 < 16 or y1 - y0 < 16:
                continue
            self.searches += 1
            candidates = [
                moved
                for face in self.detector.detect(rgb[y0:y1, x0:x1])
                if (moved := _shifted(face, x0, y0, width, height)) is not None
                and _holds(moved, cx, cy, side * self.tracker.max_distance)
                and not any(iou(moved.box, other.box) > 0.5 for other in found + added)
            ]
            if candidates:
                added.append(min(candidates, key=lambda f: _distance(f, cx, cy)))
        return added

    def _bridged(self, time: float, width: int, height: int) -> tuple[list[Face], list[int]]:
        """The last detection's faces, each moved on by its track's velocity."""
        assert self._last is not None
        faces, ids = [], []
        for track_id, face in self._seen.items():
            track = self.tracker.tracks.get(track_id)
            if track is None:
                continue
            dt = time - self._last
            moved = _shifted(face, track.velocity[0] * dt, track.velocity[1] * dt, width, height)
            if moved is not None:
                faces.append(moved)
                ids.append(track_id)
        return faces, ids


def _grown(box: tuple[float, ...], share: float) -> tuple[float, float, float, float]:
    """The box grown on every side by `share` of its longer side."""
    pad = share * max(box[2] - box[0], box[3] - box[1])
    return box[0] - pad, box[1] - pad, box[2] + pad, box[3] + pad


def _distance(face: Face, x: float, y: float) -> float:
    return math.hypot((face.x0 + face.x1) / 2 - x, (face.y0 + face.y1) / 2 - y)


def _holds(face: Face, x: float, y: float, reach: float) -> bool:
    """Whether the face's centre is within `reach` pixels of (x, y)."""
    return _distance(face, x, y) <= reach


def _shifted(face: Face, dx: float, dy: float, width: int, height: int) -> Face | None:
    """The face moved by (dx, dy) pixels, clipped to the frame; None once it has left it."""
    x0, y0 = max(0, round(face.x0 + dx)), max(0, round(face.y0 + dy))
    x1, y1 = min(width, round(face.x1 + dx)), min(height, round(face.y1 + dy))
    if x1 - x0 < 2 or y1 - y0 < 2:
        return None
    landmarks = None
    if face.landmarks is not None:
        landmarks = tuple((x + dx, y + dy) for x, y in face.landmarks)
    return Face(x0, y0, x1, y1, face.score, landmarks)


def _scaled(face: Face, factor: float, width: int, height: int) -> Face:
    """A face found on a downscaled frame, in the full frame's pixels."""
    x0, y0 = max(0, round(face.x0 * factor)), max(0, round(face.y0 * factor))
    x1, y1 = min(width, round(face.x1 * factor)), min(height, round(face.y1 * factor))
    landmarks = None
    if face.landmarks is not None:
        landmarks = tuple((x * factor, y * factor) for x, y in face.landmarks)
    return Face(x0, y0, max(x1, x0 + 1), max(y1, y0 + 1), face.score, landmarks)
