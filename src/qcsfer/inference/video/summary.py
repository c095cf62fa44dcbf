"""Per-track summaries of a video: time on screen, share of time per expression, changes.

Each sampled frame stands for the time until the next sampled frame, so the shares are shares
of time whatever the sampling. Labels are the smoothed ones (TrackedPrediction.label). The
accumulator keeps a few numbers per track, never the frames.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from .analysis import TrackedPrediction, VideoFrame


@dataclass
class TrackSummary:
    """One tracked face over a video."""

    track: int
    first_seen: float  # seconds
    last_seen: float
    frames: int = 0  # sampled frames it was seen in
    seconds: float = 0.0  # time on screen (each sampled frame counts until the next one)
    label_seconds: dict[str, float] = field(default_factory=dict)
    changes: int = 0  # how often the smoothed label changed
    label: str | None = None  # its current (last) smoothed label

    @property
    def shares(self) -> dict[str, float]:
        """Share of its time on screen per expression (sums to 1)."""
        total = sum(self.label_seconds.values())
        return {k: v / total for k, v in self.label_seconds.items()} if total else {}

    @property
    def dominant(self) -> str | None:
        """The expression it showed longest."""
        return max(self.label_seconds, key=self.label_seconds.__getitem__, default=None)

    def to_dict(self, classes: list[str]) -> dict[str, Any]:
        shares = self.shares
        return {
            "track": self.track,
            "first_seen": round(self.first_seen, 3),
            "last_seen": round(self.last_seen, 3),
            "seconds_on_screen": round(self.seconds, 3),
            "frames": self.frames,
            "dominant": self.dominant,
            "changes": self.changes,
            "shares": {c: round(shares.get(c, 0.0), 4) for c in classes},
        }


class TrackSummaries:
    """Add VideoFrames in order; `summaries` then holds one TrackSummary per track id."""

    def __init__(self) -> None:
        self.summaries: dict[int, TrackSummary] = {}
        self._previous: VideoFrame | None = None
        self._last_step = 0.0

    def add(self, frame: VideoFrame) -> None:
        time = frame.time
        if self._previous is not None:
            self._last_step = max(0.0, time - self._previous.time)
            self._credit(self._previous, self._last_step)
        for p in _tracked(frame):
            summary = self.summaries.get(p.track)
            if summary is None:
                summary = self.summaries[p.track] = TrackSummary(p.track, time, time)
            elif summary.label != p.label:
                summary.changes += 1
            summary.label = p.label
            summary.last_seen = time
            summary.frames += 1
        self._previous = frame

    def finish(self) -> list[TrackSummary]:
        """Credit the last frame (with the step before it) and return the summaries by id."""
        if self._previous is not None:
            self._credit(self._previous, self._last_step)
            self._previous = None
        return [self.summaries[k] for k in sorted(self.summaries)]

    def _credit(self, frame: VideoFrame, seconds: float) -> None:
        for p in _tracked(frame):
            summary = self.summaries[p.track]
            summary.seconds += seconds
            summary.label_seconds[p.label] = summary.label_seconds.get(p.label, 0.0) + seconds


def _tracked(frame: VideoFrame) -> list[TrackedPrediction]:
    return [p for p in frame.predictions if isinstance(p, TrackedPrediction)]


def summarize_tracks(frames: Iterable[VideoFrame]) -> list[TrackSummary]:
    """Summaries of every track in `frames` (e.g. `recognizer.video("clip.mp4")`), by id."""
    summaries = TrackSummaries()
    for frame in frames:
        summaries.add(frame)
    return summaries.finish()
