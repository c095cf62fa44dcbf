"""Where the faces of benchmarks/video.py's synthetic video are, and how well a run found them.

The video is made from a formula (`placements`), so each frame's true face squares are known:
a run's per-frame records are scored against them (faces found, false faces, tracks per true
face, id switches, labels against a reference label per face), and two runs against each other
(the same label on the same true face in the same frame).
"""

from __future__ import annotations

import itertools
import math
from collections import Counter
from typing import Literal

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


Rule = Literal["top", "nearest", "matched"]
RULES: tuple[Rule, ...] = ("top", "nearest", "matched")


def assign(
    boxes: list[list[int]], squares: list[tuple[int, int, int]], rule: Rule = "top"
) -> dict[int, int]:
    """Which box (by index) each true face gets; boxes left out are false faces. A box can only
    go to a face whose square holds its centre. "top": each box in turn to the face on top, a
    second box on a taken face is false; "nearest": the same with the nearer centre deciding
    between two squares (a box on the visible half of a face half hidden by the other often has
    its centre just inside the other's square); "matched": one box per face and one face per
    box, as many faces matched as possible, then the nearest centres (the one-to-one matching
    of multi-object tracking scores, with the squares as the gate)."""
    holds = [[k for k in range(len(squares)) if _inside(box, squares[k])] for box in boxes]
    if rule == "matched":
        return _best_matching(boxes, squares, holds)
    owners: dict[int, int] = {}
    for i, box in enumerate(boxes):
        if not holds[i]:
            continue
        if rule == "top":
            k = max(holds[i])  # later squares are drawn on top
        else:
            k = min(holds[i], key=lambda k: math.dist(_box_centre(box), _centre(squares[k])))
        owners.setdefault(k, i)
    return owners


def _best_matching(
    boxes: list[list[int]], squares: list[tuple[int, int, int]], holds: list[list[int]]
) -> dict[int, int]:
    """Every one-to-one assignment of the faces to boxes that hold them, tried (two faces)."""
    best: tuple[int, float, dict[int, int]] = (0, 0.0, {})
    choices = [
        [None] + [i for i in range(len(boxes)) if k in holds[i]] for k in range(len(squares))
    ]
    for picked in itertools.product(*choices):
        chosen = [i for i in picked if i is not None]
        if len(chosen) != len(set(chosen)):
            continue
        pairs = {k: i for k, i in enumerate(picked) if i is not None}
        cost = sum(math.dist(_box_centre(boxes[i]), _centre(squares[k])) for k, i in pairs.items())
        if len(pairs) > best[0] or (len(pairs) == best[0] and cost < best[1]):
            best = (len(pairs), cost, pairs)
    return best[2]


def _inside(box: list[int], square: tuple[int, int, int]) -> bool:
    cx, cy = _box_centre(box)
    return square[0] <= cx < square[0] + square[2] and square[1] <= cy < square[1] + square[2]


def _box_centre(box: list[int]) -> tuple[float, float]:
    return (box[0] + box[2]) / 2, (box[1] + box[3]) / 2


def _centre(square: tuple[int, int, int]) -> tuple[float, float]:
    return square[0] + square[2] / 2, square[1] + square[2] / 2


def score(frames: list[dict], fps: float, reference: list[str], rule: Rule = "top") -> dict:
    """A run's records ({"frame", "faces": [{"track", "box", "label", "raw_label"}]}) scored
    against the true faces; `reference`: the expected label of each face; `rule`: how boxes go
    to faces (`assign`)."""
    truths = found = false = right = raw_right = 0
    tracks: dict[int, Counter] = {0: Counter(), 1: Counter()}
    switches = [0, 0]
    last: list[int | None] = [None, None]
    for record in frames:
        squares = placements(record["frame"], fps)
        seen = visible(record["frame"], fps)
        matched = {k: record["faces"][i] for k, i in _owners(record, squares, rule).items()}
        false += len(record["faces"]) - len(matched)
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


def agreement(ours: list[dict], theirs: list[dict], fps: float, rule: Rule = "top") -> dict:
    """How often two runs give a visible true face the same label in the same frame (of the
    frames where both found it)."""
    by_frame = {record["frame"]: record for record in theirs}
    both = same = same_raw = 0
    for record in ours:
        other = by_frame.get(record["frame"])
        if other is None:
            continue
        squares = placements(record["frame"], fps)
        mine = {k: record["faces"][i] for k, i in _owners(record, squares, rule).items()}
        yours = {k: other["faces"][i] for k, i in _owners(other, squares, rule).items()}
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


def _owners(record: dict, squares: list[tuple[int, int, int]], rule: Rule) -> dict[int, int]:
    return assign([face["box"] for face in record["faces"]], squares, rule)
