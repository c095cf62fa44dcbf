"""Live sources (`webcam:N`): read the camera in a thread and analyse only its newest frame.

A camera does not wait for us. Read in the same loop as the analysis, frames queue up in the
driver's buffers while a frame is analysed, and the output lags ever further behind what the
camera sees; on a slow machine it never catches up. Here a thread reads every frame the camera
gives as it comes and keeps only the newest; the analysis takes that one when it is ready for
the next, and the frames it had no time for are dropped (counted in `ReadStats.dropped`). The
rate achieved is the one the progress line shows (`ReadStats.progress`).
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

MAX_BAD_READS = 25  # consecutive failed reads before the camera counts as gone
JOIN_TIMEOUT = 2.0  # seconds to wait for the reading thread when stopping


class NewestFrame(threading.Thread):
    """Reads `capture` until stopped or the camera fails, keeping only the newest frame."""

    def __init__(self, capture: Any) -> None:
        super().__init__(name="qcsfer-camera", daemon=True)
        self.capture = capture
        self.read_count = 0  # frames the camera gave
        self.ended = False
        self._frame: np.ndarray | None = None
        self._index = -1
        self._time = 0.0  # time.monotonic() when the newest frame arrived
        self._halt = threading.Event()
        self._changed = threading.Condition()

    def run(self) -> None:
        bad = 0
        while not self._halt.is_set() and bad < MAX_BAD_READS:
            ok, frame = self.capture.read()  # blocks until the camera's next frame
            if not ok or frame is None or frame.size == 0:
                bad += 1
                continue
            bad = 0
            with self._changed:
                self._frame, self._index, self._time = frame, self.read_count, time.monotonic()
                self.read_count += 1
                self._changed.notify_all()
        with self._changed:
            self.ended = True
            self._changed.notify_all()

    def newest(self, after: int) -> tuple[int, float, np.ndarray] | None:
        """(index, arrival time, frame) of the newest frame read after frame `after`, waiting
        for one; None once the camera has ended."""
        with self._changed:
            self._changed.wait_for(lambda: self._index > after or self.ended)
            if self._index > after and self._frame is not None:
                return self._index, self._time, self._frame
            return None

    def stop(self) -> None:
        self._halt.set()
        self.join(JOIN_TIMEOUT)
        if self.is_alive():  # a driver that blocks in read(): the thread is a daemon
            log.warning("the camera did not stop within %.0f s", JOIN_TIMEOUT)
