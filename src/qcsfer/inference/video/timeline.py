"""Timeline pictures: one track's smoothed class probabilities over time, stacked, as a PNG.

A Timeline keeps at most `capacity` points however long the video: when full it drops every
other point and from then on keeps every other new one (a picture is ~1000 pixels wide, so
nothing visible is lost). Stretches where the face was not seen stay blank.
"""

from __future__ import annotations

import gc
import logging
from pathlib import Path

import numpy as np

from ...errors import UsageError

log = logging.getLogger(__name__)

# One colour per FERPlus class (others cycle through the list): calm colours for calm states.
COLORS = {
    "neutral": "#b0b0b0",
    "happiness": "#f2c14e",
    "surprise": "#f78154",
    "sadness": "#4d9de0",
    "anger": "#d7263d",
    "disgust": "#6a994e",
    "fear": "#7b2cbf",
    "contempt": "#8d6a4f",
}
FALLBACK = ["#1b998b", "#2d3047", "#fffd82", "#ff9b71", "#e84855", "#3185fc"]


class Timeline:
    """Times (s) and probability rows of one track, thinned to at most `capacity` points."""

    def __init__(self, capacity: int = 2048) -> None:
        if capacity < 4:
            raise UsageError("capacity must be >= 4")
        self.capacity = capacity
        self.times: list[float] = []
        self.rows: list[np.ndarray] = []
        self.stride = 1
        self._seen = 0

    def add(self, time: float, probabilities: np.ndarray) -> None:
        self._seen += 1
        if (self._seen - 1) % self.stride:
            return
        self.times.append(time)
        self.rows.append(np.asarray(probabilities, dtype=np.float32))
        if len(self.times) >= self.capacity:
            self.times, self.rows = self.times[::2], self.rows[::2]
            self.stride *= 2
            self._seen = 0

    def __len__(self) -> int:
        return len(self.times)


def draw_timeline(
    timeline: Timeline, classes: list[str], path: Path, title: str, gap: float
) -> Path | None:
    """Write the PNG; None (logged) when matplotlib is not installed or there is nothing to draw.

    gap: seconds between points beyond which the face counts as not seen there.
    """
    if len(timeline) < 2:
        return None
    try:
        from matplotlib.figure import Figure
    except ImportError:
        log.info("matplotlib is not installed: no timeline pictures (pip install 'qcsfer[plots]')")
        return None
    times = np.array(timeline.times)
    rows = np.stack(timeline.rows)
    breaks = np.flatnonzero(np.diff(times) > gap * timeline.stride) + 1
    figure = Figure(figsize=(10, 2.6), dpi=100)
    axes = figure.add_subplot()
    colors = [COLORS.get(c, FALLBACK[i % len(FALLBACK)]) for i, c in enumerate(classes)]
    for n, (segment_t, segment_p) in enumerate(
        zip(np.split(times, breaks), np.split(rows, breaks), strict=True)
    ):
        labels = classes if n == 0 else ()
        axes.stackplot(segment_t, segment_p.T, colors=colors, labels=labels, linewidth=0)
    axes.set_xlim(times[0], times[-1])
    axes.set_ylim(0, 1)
    axes.set_xlabel("time (s)")
    axes.set_ylabel("probability")
    axes.set_title(title, fontsize=10, loc="left")
    axes.legend(loc="center left", bbox_to_anchor=(1.0, 0.5), fontsize=8, frameon=False)
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path)
    # A Figure refers to itself through its axes and canvas, so it is freed only when the cyclic
    # collector runs; until then the figures of a long video's ended tracks pile up (RSS +25 MB
    # over 30 timelines, against flat when collected at once).
    del figure, axes
    gc.collect()
    return path
