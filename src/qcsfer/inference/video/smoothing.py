"""Temporal smoothing of one track's class probabilities: an exponential moving average in
log space with a time constant in seconds.

Averaging log-probabilities (then renormalising) is a weighted geometric mean: frames that
agree reinforce each other and one confident outlier frame cannot flip the label on its own.
The weight of a new frame is 1 - exp(-dt / tau), with dt the seconds since the track's previous
frame, so the smoothing spans the same stretch of time whatever the sampling (--every, --fps),
and a track seen again after a gap starts almost afresh.
"""

from __future__ import annotations

import math

import numpy as np

from ...errors import UsageError

LOG_FLOOR = math.log(1e-6)  # a probability of 0 would make the log-average -inf for good


def normalized(log_probs: np.ndarray) -> np.ndarray:
    """Probabilities from unnormalised log-probabilities (a softmax)."""
    shifted = np.exp(log_probs - log_probs.max())
    return shifted / shifted.sum()


class ProbabilitySmoother:
    """Per-track log-space EMA; tau: time constant in seconds (0 turns smoothing off)."""

    def __init__(self, tau: float = 0.5) -> None:
        if not 0 <= tau < math.inf:  # also refuses nan, which would make every value nan
            raise UsageError(f"the smoothing time constant must be finite seconds >= 0, got {tau}")
        self.tau = tau
        self._state: dict[int, tuple[float, np.ndarray]] = {}  # track -> (time, log-probs)

    def update(self, track: int, time: float, probabilities: np.ndarray) -> np.ndarray:
        """The smoothed probabilities of `track` after its frame at `time` seconds."""
        log_probs = np.maximum(np.log(np.maximum(probabilities, 1e-300)), LOG_FLOOR)
        previous = self._state.get(track)
        if previous is None or self.tau == 0:
            state = log_probs
        else:
            last_time, last_state = previous
            weight = 1.0 - math.exp(-max(time - last_time, 0.0) / self.tau)
            state = last_state + weight * (log_probs - last_state)
        self._state[track] = (time, state)
        return normalized(state)

    def keep_only(self, tracks: set[int] | dict[int, object]) -> None:
        """Forget tracks that ended (keeps memory bounded on long videos)."""
        for track in [t for t in self._state if t not in tracks]:
            del self._state[track]
