"""Face tracking across sampled video frames: box overlap and motion, stable ids, short gaps.

Each track remembers its last box, its velocity (pixels per second, smoothed) and when it was
last seen. A new frame's detections are matched to tracks by how well each detection agrees
with where the track is expected: its box moved on by its velocity (motion), or its last box
where it stood (a face that paused or whose detection dropped out). Pairs are taken greedily,
best first, and only while they pass a gate, so a detection far from every track starts a new
id. Times are in seconds, so the behaviour does not depend on the sampling (--every, --fps).

Limits (no appearance model: identity is where a face is and how it moves):
- Two faces that cross keep their ids while they move steadily: the one hidden behind the other
  is carried along by its velocity and picked up again when it reappears. Faces that meet and
  stop, or turn back, while one hides the other can swap ids.
- A face that leaves the frame and comes back keeps its id only within `max_gap` seconds and
  near where it was expected; otherwise it gets a new id (tracks are never merged afterwards).
- Faces moving more than about `max_distance` face widths between two sampled frames are not
  followed (sample more often: a smaller --every).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from ...errors import UsageError
from ..faces import Box, Face


def iou(a: Box | tuple[float, ...], b: Box | tuple[float, ...]) -> float:
    """Intersection over union of two (x0, y0, x1, y1) boxes."""
    w = min(a[2], b[2]) - max(a[0], b[0])
    h = min(a[3], b[3]) - max(a[1], b[1])
    if w <= 0 or h <= 0:
        return 0.0
    inter = w * h
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union


def distinct(faces: list[Face], overlap: float = 0.3) -> list[Face]:
    """Faces without duplicates: of boxes overlapping by more than `overlap` (IoU), or one
    holding the other's centre, only the higher-scoring (then larger) one is kept, since a
    detector sometimes reports one face twice, which would start a spurious track."""
    kept: list[Face] = []
    ranked = sorted(faces, key=lambda f: (-(f.score or 0.0), -f.width * f.height))
    for face in ranked:
        if not any(_same_face(face.box, k.box, overlap) for k in kept):
            kept.append(face)
    return [f for f in faces if f in kept]


def _same_face(a: Box, b: Box, overlap: float) -> bool:
    (ax, ay), (bx, by) = _centre(a), _centre(b)
    inside = (b[0] <= ax < b[2] and b[1] <= ay < b[3]) or (a[0] <= bx < a[2] and a[1] <= by < a[3])
    return inside or iou(a, b) > overlap


def _centre(box: Box | tuple[float, ...]) -> tuple[float, float]:
    return (box[0] + box[2]) / 2, (box[1] + box[3]) / 2


@dataclass
class Track:
    """A tracked face: its id, last box and time, and velocity of its centre (px/s)."""

    id: int
    box: Box
    time: float
    velocity: tuple[float, float] = (0.0, 0.0)
    hits: int = 1

    def predicted(self, time: float, horizon: float) -> tuple[float, float, float, float]:
        """The box moved on by the velocity to `time` (at most `horizon` seconds ahead)."""
        dt = min(time - self.time, horizon)
        dx, dy = self.velocity[0] * dt, self.velocity[1] * dt
        x0, y0, x1, y1 = self.box
        return x0 + dx, y0 + dy, x1 + dx, y1 + dy


class Tracker:
    """Assigns track ids to the face boxes of successive frames (call `update` in time order).

    max_gap: seconds a track survives unseen (a short occlusion or missed detection);
    max_distance: how far, in face sizes, a detection may be from where a track is expected;
    velocity_smoothing: weight of the newest displacement in the velocity (0..1).
    """

    def __init__(
        self,
        *,
        max_gap: float = 1.5,
        max_distance: float = 1.0,
        velocity_smoothing: float = 0.5,
        horizon: float = 1.0,
    ) -> None:
        if max_gap < 0 or max_distance <= 0 or not 0 < velocity_smoothing <= 1 or horizon < 0:
            raise UsageError(
                "need max_gap >= 0, max_distance > 0, 0 < velocity_smoothing <= 1, horizon >= 0"
            )
        self.max_gap = max_gap
        self.max_distance = max_distance
        self.velocity_smoothing = velocity_smoothing
        self.horizon = horizon
        self.tracks: dict[int, Track] = {}  # alive tracks by id
        self._next_id = 1
        self._time = -math.inf

    def update(self, time: float, boxes: list[Box]) -> list[int]:
        """The track id of each box (in order) at `time` seconds; new ids for new faces."""
        if time < self._time:
            raise UsageError(f"frames must come in time order ({time} s after {self._time} s)")
        self._time = time
        self.tracks = {i: t for i, t in self.tracks.items() if time - t.time <= self.max_gap}
        pairs = sorted(
            (cost, track_id, index)
            for index, box in enumerate(boxes)
            for track_id, track in self.tracks.items()
            if (cost := self._cost(track, box, time)) is not None
        )
        ids: list[int | None] = [None] * len(boxes)
        taken: set[int] = set()
        for _, track_id, index in pairs:
            if ids[index] is None and track_id not in taken:
                ids[index] = track_id
                taken.add(track_id)
                self._follow(self.tracks[track_id], boxes[index], time)
        for index, box in enumerate(boxes):
            if ids[index] is None:
                ids[index] = self._next_id
                self.tracks[self._next_id] = Track(self._next_id, box, time)
                self._next_id += 1
        return [i for i in ids if i is not None]

    def _cost(self, track: Track, box: Box, time: float) -> float | None:
        """How badly `box` fits `track` (lower is better), or None outside the gate.

        The better of two hypotheses: the face moved on at its velocity, or stayed where it was
        last seen. Distance is between centres in units of the track's face size; a size change
        and overlap loss add to it; time unseen adds a little so recent tracks win ties.
        """
        size = math.sqrt((track.box[2] - track.box[0]) * (track.box[3] - track.box[1]))
        area = (box[2] - box[0]) * (box[3] - box[1])
        size_change = abs(math.log(max(area, 1) / max(size * size, 1))) / 2
        if size_change > math.log(2):  # more than twice or half the side: another face
            return None
        best = None
        for expected in (track.predicted(time, self.horizon), track.box):
            ex, ey = _centre(expected)
            bx, by = _centre(box)
            distance = math.hypot(bx - ex, by - ey) / max(size, 1.0)
            if distance > self.max_distance:
                continue
            cost = distance + (1 - iou(expected, box)) * 0.5 + size_change
            best = cost if best is None else min(best, cost)
        if best is None:
            return None
        return best + 0.1 * (time - track.time) / max(self.max_gap, 1e-9)

    def _follow(self, track: Track, box: Box, time: float) -> None:
        dt = time - track.time
        if dt > 0:
            (ox, oy), (nx, ny) = _centre(track.box), _centre(box)
            new = ((nx - ox) / dt, (ny - oy) / dt)
            if track.hits == 1:
                track.velocity = new
            else:
                a = self.velocity_smoothing
                vx, vy = track.velocity
                track.velocity = (vx + a * (new[0] - vx), vy + a * (new[1] - vy))
        track.box = box
        track.time = time
        track.hits += 1
