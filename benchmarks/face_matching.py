"""When a detection is the face a benchmark placed (the detector and photo-path benchmarks)."""

from __future__ import annotations

Box = tuple[float, float, float, float]


def matches(found: Box, truth: Box) -> bool:
    """A detection of this face: centred in the middle 60% of its box, of a similar size.

    Looser than an IoU test on purpose: a FERPlus crop is the true box only approximately
    (some crops are wider than the face, and then the detector's box is smaller than the crop).
    """
    cx, cy = (found[0] + found[2]) / 2, (found[1] + found[3]) / 2
    w, h = truth[2] - truth[0], truth[3] - truth[1]
    centred = (
        abs(cx - (truth[0] + truth[2]) / 2) <= 0.3 * w
        and abs(cy - (truth[1] + truth[3]) / 2) <= 0.3 * h
    )
    ratio = (found[2] - found[0]) / w
    return centred and 0.35 <= ratio <= 1.4
