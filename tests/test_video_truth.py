"""benchmarks/video_truth.py: how detected boxes are given to the video's true faces."""

from __future__ import annotations

import pytest

from .conftest import REPO

# Face 0 at (0, 0), face 1 on top of it at (80, 0), both 100 px: they overlap over x 80-100.
SQUARES = [(0, 0, 100), (80, 0, 100)]
FRONT = [100, 10, 160, 90]  # centre (130, 50): only inside face 1
HALF_HIDDEN = [50, 10, 100, 90]  # centre (75, 50): inside face 0 only
LEANING = [40, 10, 130, 90]  # centre (85, 50): inside both squares, nearer face 0's centre


@pytest.fixture()
def truth(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.syspath_prepend(str(REPO / "benchmarks"))
    import video_truth

    return video_truth


def test_clear_boxes_go_to_their_faces_under_every_rule(truth) -> None:
    for rule in truth.RULES:
        assert truth.assign([HALF_HIDDEN, FRONT], SQUARES, rule) == {0: 0, 1: 1}
        assert truth.assign([[300, 300, 340, 340]], SQUARES, rule) == {}  # in no square


def test_a_box_in_both_squares(truth) -> None:
    # Alone, the top square rule gives it to the face on top, the others to the nearer centre.
    assert truth.assign([LEANING], SQUARES, "top") == {1: 0}
    assert truth.assign([LEANING], SQUARES, "nearest") == {0: 0}
    assert truth.assign([LEANING], SQUARES, "matched") == {0: 0}
    # Beside the front face's box, found first: the top square rule counts it a second box on
    # face 1 (a false face, face 0 missed); one-to-one matching gives each face its box.
    assert truth.assign([FRONT, LEANING], SQUARES, "top") == {1: 0}
    assert truth.assign([FRONT, LEANING], SQUARES, "matched") == {1: 0, 0: 1}


def test_matching_keeps_one_box_per_face_and_prefers_nearer_centres(truth) -> None:
    near = [40, 40, 60, 60]  # centre (50, 50): face 0's centre
    off = [0, 0, 20, 20]  # centre (10, 10): in face 0 too
    assert truth.assign([off, near], SQUARES, "matched") == {0: 1}
    assert truth.assign([off, near], SQUARES, "top") == {0: 0}  # the first box in order


def test_score_counts_false_faces_and_labels_by_the_rule(truth) -> None:
    fps = 15.0
    squares = truth.placements(112, fps)  # 7.5 s: the faces far apart
    boxes = [[x, y, x + side, y + side] for x, y, side in squares]
    faces = [
        {"track": k, "box": box, "label": "happiness", "raw_label": "happiness"}
        for k, box in enumerate(boxes)
    ]
    frames = [{"frame": 112, "faces": faces}]
    for rule in truth.RULES:
        scored = truth.score(frames, fps, ["happiness", "happiness"], rule)
        assert (scored["found"], scored["false_faces"], scored["id_switches"]) == (2, 0, 0)
        assert scored["label_accuracy"] == 1.0
