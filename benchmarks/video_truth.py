"""Where the faces of benchmarks/video.py's synthetic video are, and how well a run found them.

The video is made from a formula (`placements`), so each frame's true face squares are known:
a run's per-frame records are scored against them (faces found, false faces, tracks per true
face, id switches, labels against a reference label per face), and two runs against each other
(the same label on the same true face in the same frame).
"""

from __future__ import annotations

import math
from collections import Counter

SIZE = (1280, 720)
COVERED = 0.5  # a face more than this much hidden by the other counts as not visible


def placements(index: int, fps: float) -> list[tuple[int, int, int]]:
    """(x, y, side) of each face's square in frame `index`, in drawing order (the second on
    top): the astronaut and her mirror image, crossing paths, sizes changing slowly."""
    t = index / fps
    out = []
    for k in range(2):
        side = round(200 + 60 * math.sin(0.3 * t + k))
        phase = 0.21 * t + k * math.pi  # the two move in opposite directions and cross
        x = round((SIZE[0] - side) * (0.5 + 0.5 * math.sin(phase)))
        y = round((SIZE[1] - side) * (0.5 + 0.3 * math.sin(0.13 * t + k)))
        out.append((x, y, side))
    return out


def visible(index: int, fps: float) -> list[bool]:
    """Whether each face is visible (the first may be hidden by the second)."""
    (ax, ay, aside), (bx, by, bside) = placements(index, fps)
    w = max(0, min(ax + aside, bx + bside) - max(ax, bx))
    h = max(0, min(ay + aside, by + bside) - max(ay, by))
    return [w * h <= COVERED * aside * aside, True]


def _owner(
    box: list[int], squares: list[tuple[int, int, int]], nearest: bool = False
) -> int | None:
    """The true face whose square holds the box's centre, if any: of two, the one on top, or
    with `nearest` the one whose centre is nearer (a box on the visible half of a face half
    hidden by the other often has its centre just inside the other's square)."""
    cx, cy = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
    holding = [
        k
        for k in reversed(range(len(squares)))
        if squares[k][0] <= cx < squares[k][0] + squares[k][2]
        and squares[k][1] <= cy < squares[k][1] + squares[k][2]
    ]
    if not holding:
        return None
    if not nearest:
        return holding[0]
    return min(holding, key=lambda k: math.dist((cx, cy), _centre(squares[k])))


def _centre(square: tuple[int, int, int]) -> tuple[float, float]:
    return square[0] + square[2] / 2, square[1] + square[2] / 2


def score(frames: list[dict], fps: float, reference: list[str], nearest: bool = False) -> dict:
    """A run's records ({"frame", "faces": [{"track", "box", "label", "raw_label"}]}) scored
    against the true faces; `reference`: the expected label of each face; `nearest`: boxes go
    to faces as `_owner` says."""
    truths = found = false = right = raw_right = 0
    tracks: dict[int, Counter] = {0: Counter(), 1: Counter()}
    switches = [0, 0]
    last: list[int | None] = [None, None]
    for record in frames:
        squares = placements(record["frame"], fps)
        seen = visible(record["frame"], fps)
        matched: dict[int, dict] = {}
        for face in record["faces"]:
            k = _owner(face["box"], squares, nearest)
            if k is None or k in matched:
                false += 1
            else:
                matched[k] = face
        for k, face in matched.items():
            tracks[k][face["track"]] += 1
            if last[k] is not None and last[k] != face["track"]:
                switches[k] += 1
            last[k] = face["track"]
        for k in range(2):
            if not seen[k]:
                continue
            truths += 1
            if k in matched:
                found += 1
                right += matched[k]["label"] == reference[k]
                raw_right += matched[k]["raw_label"] == reference[k]
    all_tracks = {t for record in frames for face in record["faces"] for t in [face["track"]]}
    return {
        "visible_faces": truths,
        "found": found,
        "recall": found / max(truths, 1),
        "false_faces": false,
        "tracks": len(all_tracks),
        "tracks_per_face": [len(tracks[k]) for k in range(2)],
        "id_switches": sum(switches),
        "label_accuracy": right / max(truths, 1),
        "raw_label_accuracy": raw_right / max(truths, 1),
    }


def agreement(ours: list[dict], theirs: list[dict], fps: float) -> dict:
    """How often two runs give a visible true face the same label in the same frame (of the
    frames where both found it)."""
    by_frame = {record["frame"]: record for record in theirs}
    both = same = same_raw = 0
    for record in ours:
        other = by_frame.get(record["frame"])
        if other is None:
            continue
        squares = placements(record["frame"], fps)
        mine = {_owner(f["box"], squares): f for f in record["faces"]}
        yours = {_owner(f["box"], squares): f for f in other["faces"]}
        for k in range(2):
            if k in mine and k in yours and visible(record["frame"], fps)[k]:
                both += 1
                same += mine[k]["label"] == yours[k]["label"]
                same_raw += mine[k]["raw_label"] == yours[k]["raw_label"]
    return {
        "faces_compared": both,
        "same_label": same / max(both, 1),
        "same_raw": same_raw / max(both, 1),
    }
