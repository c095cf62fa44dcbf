"""Video: tracking, smoothing, streaming outputs, corrupt and interrupted videos.

Videos are made in tmp_path with OpenCV from the packaged astronaut photo: its face (and its
mirror image, a second "person") moving over a plain background. Haar finds both reliably.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable
from pathlib import Path

import cv2
import numpy as np
import pytest

from qcsfer.inference.faces import Face, FaceDetector
from qcsfer.inference.smoothing import ProbabilitySmoother
from qcsfer.inference.tracking import Tracker, distinct, iou

ASSETS = Path(__file__).resolve().parents[1] / "src" / "qcsfer" / "assets"
SIZE = (480, 270)  # frame width, height
FPS = 10


def face_sprite(side: int = 120) -> np.ndarray:
    """The astronaut's face with a little context, BGR, side x side."""
    photo = cv2.imread(str(ASSETS / "astronaut.jpg"))
    return cv2.resize(photo[40:200, 145:305], (side, side), interpolation=cv2.INTER_AREA)


def compose(placements: Iterable[tuple[np.ndarray, int, int]]) -> np.ndarray:
    """A gray frame with each sprite pasted at (x, y), later ones on top."""
    frame = np.full((SIZE[1], SIZE[0], 3), 90, np.uint8)
    for sprite, x, y in placements:
        h, w = sprite.shape[:2]
        frame[y : y + h, x : x + w] = sprite
    return frame


def write_video(path: Path, frames: Iterable[np.ndarray], fps: int = FPS) -> Path:
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), fps, SIZE)
    assert writer.isOpened()
    for frame in frames:
        writer.write(frame)
    writer.release()
    return path


def crossing_frames(n: int = 40) -> list[np.ndarray]:
    """Face A moves right, its mirror B moves left lower down; B hides A where they cross."""
    a = face_sprite()
    b = np.ascontiguousarray(a[:, ::-1])
    return [compose([(a, 5 + 9 * i, 30), (b, SIZE[0] - 125 - 9 * i, 100)]) for i in range(n)]


def track_video(path: Path, tracker: Tracker, every: int = 1) -> list[list[tuple[int, int]]]:
    """(track id, box centre x) of each face in every `every`th frame of a video file."""
    detector = FaceDetector()
    capture = cv2.VideoCapture(str(path))
    out, index = [], 0
    while True:
        ok, frame = capture.read()
        if not ok:
            break
        if index % every == 0:
            boxes = [face.box for face in distinct(detector.detect(frame[:, :, ::-1]))]
            ids = tracker.update(index / FPS, boxes)
            out.append([(i, (b[0] + b[2]) // 2) for i, b in zip(ids, boxes, strict=True)])
        index += 1
    capture.release()
    return out


# -- tracking ------------------------------------------------------------------------------------


@pytest.mark.parametrize("every", [1, 2])
def test_two_faces_that_cross_keep_their_ids(tmp_path: Path, every: int) -> None:
    video = write_video(tmp_path / "cross.avi", crossing_frames())
    frames = track_video(video, Tracker(), every)
    both = [f for f in frames if len(f) == 2]
    assert len(both) >= 0.7 * len(frames)  # both faces are seen before and after crossing
    assert any(len(f) < 2 for f in frames)  # and one hides the other while they cross
    ids = {i for f in frames for i, _ in f}
    assert ids == {1, 2}, frames  # no new ids, although A was hidden for several frames
    first, last = both[0], both[-1]
    # Each id stays with its face: the face moving right starts left and ends right.
    start = dict(first)
    end = dict(last)
    right_mover = min(start, key=start.__getitem__)
    assert end[right_mover] == max(end.values()), frames


def test_without_motion_the_hidden_face_would_get_a_new_id(tmp_path: Path) -> None:
    """The same crossing with motion prediction turned off loses A's id: motion matters."""
    video = write_video(tmp_path / "cross.avi", crossing_frames())
    frames = track_video(video, Tracker(horizon=0.0), every=2)
    assert len({i for f in frames for i, _ in f}) > 2


def test_a_face_that_disappears_briefly_keeps_its_id(tmp_path: Path) -> None:
    face = face_sprite()
    blank = compose([])
    at = [compose([(face, 100 + 2 * i, 80)]) for i in range(30)]
    # Seen 1 s, gone 0.8 s (short gap), seen 1 s, gone 3 s (long gap), seen 1 s.
    frames = at[:10] + [blank] * 8 + at[10:20] + [blank] * 30 + at[20:30]
    video = write_video(tmp_path / "gap.avi", frames)
    seen = track_video(video, Tracker(max_gap=1.5))
    ids = [(index, f[0][0]) for index, f in enumerate(seen) if f]
    assert len(ids) >= 24  # Haar misses a few frames: gaps of their own
    assert {i for index, i in ids if index < 28} == {1}  # the same id across the short gap
    assert {i for index, i in ids if index >= 58} == {2}  # a new one after the long gap


def test_tracker_rules() -> None:
    assert iou((0, 0, 10, 10), (5, 0, 15, 10)) == pytest.approx(1 / 3)
    tracker = Tracker(max_gap=1.0)
    assert tracker.update(0.0, [(0, 0, 50, 50), (200, 0, 250, 50)]) == [1, 2]
    assert tracker.update(0.1, [(205, 0, 255, 50), (5, 0, 55, 50)]) == [2, 1]  # order free
    assert tracker.update(0.2, [(400, 300, 450, 350)]) == [3]  # far from both: new face
    assert tracker.update(0.3, [(10, 0, 60, 50), (12, 2, 112, 102)]) == [1, 4]  # 2x size: new
    with pytest.raises(ValueError, match="time order"):
        tracker.update(0.1, [])
    # One face reported twice (a box inside a box) counts once: the surer box stays.
    faces = [Face(0, 0, 50, 50, 3.0), Face(5, 5, 45, 45, 9.0), Face(100, 0, 150, 50, 1.0)]
    assert distinct(faces) == faces[1:]


# -- smoothing -----------------------------------------------------------------------------------


def label_flips(labels: list[int]) -> int:
    return sum(a != b for a, b in itertools.pairwise(labels))


@pytest.mark.parametrize("step", [0.04, 0.2])  # every frame or every 5th at 25 frames/s
def test_smoothing_reduces_flips_and_follows_a_real_change(step: float) -> None:
    rng = np.random.default_rng(0)
    times = np.arange(0, 20, step)
    truth = np.where(times < 10, 1, 3)  # the expression really changes at 10 s
    raw, smooth = [], []
    smoother = ProbabilitySmoother(tau=1.0)
    for t, label in zip(times, truth, strict=True):
        logits = rng.normal(0, 1.0, 8)
        logits[label] += 1.2  # right on average, often wrong frame by frame
        probs = np.exp(logits) / np.exp(logits).sum()
        raw.append(int(np.argmax(probs)))
        smooth.append(int(np.argmax(smoother.update(7, float(t), probs))))
    raw_flips, smooth_flips = label_flips(raw), label_flips(smooth)
    assert raw_flips > 0.3 * len(times)  # the raw labels are noisy
    assert smooth_flips < raw_flips / 4
    raw_right = np.mean(np.array(raw) == truth)
    smooth_right = np.mean(np.array(smooth) == truth)
    assert smooth_right > raw_right + 0.2
    # It follows the real change within about two seconds, and does not lag behind for good.
    after = np.array(smooth)[(times > 12) & (times < 20)]
    assert np.mean(after == 3) > 0.9
    before = np.array(smooth)[(times > 2) & (times < 10)]
    assert np.mean(before == 1) > 0.9


def test_smoothing_depends_on_time_not_on_sampling() -> None:
    start, high = np.array([0.1, 0.8, 0.1]), np.array([0.8, 0.1, 0.1])
    first, second = ProbabilitySmoother(tau=1.0), ProbabilitySmoother(tau=1.0)
    first.update(1, 0.0, start)
    second.update(1, 0.0, start)
    for t in np.arange(0.1, 1.01, 0.1):  # ten frames 0.1 s apart ...
        a = first.update(1, float(t), high)
    b = second.update(1, 1.0, high)  # ... or one frame 1 s later: the same state
    np.testing.assert_allclose(a, b, rtol=1e-9)
    # A track seen again after a long gap starts almost afresh.
    np.testing.assert_allclose(second.update(1, 60.0, np.full(3, 1 / 3)), 1 / 3, atol=1e-6)
    with pytest.raises(ValueError):
        ProbabilitySmoother(tau=-1)
