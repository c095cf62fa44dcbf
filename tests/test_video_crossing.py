"""Faces that meet in a video: the crossing rules of `FaceFinder` and `--detect-every`, on
synthetic boxes (the frame number is written in the first pixel; the detectors read it)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from qcsfer.cli import main
from qcsfer.errors import UsageError
from qcsfer.inference.faces import Face
from qcsfer.inference.video import analysis
from qcsfer.inference.video.detect import FaceFinder
from qcsfer.inference.video.tracking import Tracker

from .test_inference import save_tiny
from .test_video import crossing_frames, write_video

WIDTH, HEIGHT = 640, 160


def frame(index: int, faces: list[Face] = ()) -> np.ndarray:  # type: ignore[assignment]
    """A black frame with its number in the first pixel and face k drawn in channel k + 1."""
    image = np.zeros((HEIGHT, WIDTH, 3), np.uint8)
    image[0, 0, 0] = index
    for k, face in enumerate(faces):
        image[face.y0 : face.y1, face.x0 : face.x1, k + 1] = 255
    return image


def meeting(index: int) -> list[Face]:
    """Two 40 px faces 500 px apart at frame 0, each moving 12 px per frame towards the other:
    their boxes grown by half a side (NEAR) overlap from frame 20 on."""
    a, b = 20 + 12 * index, 560 - 12 * index
    return [Face(a, 60, a + 40, 100, 0.9), Face(b, 60, b + 40, 100, 0.9)]


class Meeting:
    """Sees both faces on every call; records the frames it ran on."""

    name = "meeting"
    margin = 0.0

    def __init__(self) -> None:
        self.frames: list[int] = []

    def detect(self, rgb: np.ndarray) -> list[Face]:
        self.frames.append(int(rgb[0, 0, 0]))
        return meeting(int(rgb[0, 0, 0]))


def test_faces_near_each_other_are_detected_on_every_frame() -> None:
    detector = Meeting()
    finder = FaceFinder(detector, Tracker(), interval=0.1)
    for i in range(22):
        faces, ids = finder.find(frame(i), i / 15)
        assert len(faces) == 2 and sorted(ids) == [1, 2], i
    assert detector.frames == [*range(0, 20, 2), 20, 21]  # every other frame, then all

    plain = Meeting()
    old = FaceFinder(plain, Tracker(), interval=0.1, search=False)
    for i in range(22):
        old.find(frame(i), i / 15)
    assert plain.frames == list(range(0, 22, 2))  # without the rule: bridged throughout


class Blobs:
    """Finds the drawn faces (channel k + 1: face k) in whatever it is given, a frame or a
    region of one; on a whole frame from frame `shy_from` on it misses face 1 (as BlazeFace
    misses a small face at 256 px that it finds in a region around it)."""

    name = "blobs"
    margin = 0.0

    def __init__(self, shy_from: int) -> None:
        self.shy_from = shy_from
        self.regions = 0

    def detect(self, rgb: np.ndarray) -> list[Face]:
        whole = rgb.shape[:2] == (HEIGHT, WIDTH)
        self.regions += not whole
        faces = []
        for k in range(2):
            if whole and k == 1 and rgb[0, 0, 0] >= self.shy_from:
                continue
            ys, xs = np.nonzero(rgb[:, :, k + 1])
            if len(xs):
                x0, y0, x1, y1 = int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1
                faces.append(Face(x0, y0, x1, y1, 0.9))
        return faces


def drifting(index: int) -> list[Face]:
    return [Face(20, 60, 60, 100), Face(400 + 5 * index, 60, 440 + 5 * index, 100)]


def test_a_track_the_whole_frame_misses_is_searched_for_where_it_is_expected() -> None:
    detector = Blobs(shy_from=3)
    finder = FaceFinder(detector, Tracker(), interval=0.0)
    for i in range(8):
        faces, ids = finder.find(frame(i, drifting(i)), i / 15)
        assert ids == [1, 2], i  # the shy face keeps its track
        assert faces[1].box == drifting(i)[1].box, i  # found where it is, in frame pixels
    assert finder.searches == detector.regions == 5  # frames 3-7, one region each

    plain = FaceFinder(Blobs(shy_from=3), Tracker(), interval=0.0, search=False)
    seen = [plain.find(frame(i, drifting(i)), i / 15)[1] for i in range(8)]
    assert seen[2] == [1, 2] and seen[3:] == [[1]] * 5  # without the search it is lost


def test_a_face_seen_once_is_not_searched_for() -> None:
    detector = Blobs(shy_from=1)  # face 1 seen on frame 0 only: maybe a false face
    finder = FaceFinder(detector, Tracker(), interval=0.0)
    for i in range(4):
        finder.find(frame(i, drifting(i)), i / 15)
    assert finder.searches == 0


def test_detect_every_n_frames() -> None:
    detector = Meeting()
    finder = FaceFinder(detector, Tracker(), every=3, search=False)
    for i in range(9):
        finder.find(frame(i), i / 15)
    assert detector.frames == [0, 3, 6]
    for bad in (0, -1, 1.5, True):
        with pytest.raises(UsageError, match="Nth frame"):
            FaceFinder(detector, Tracker(), every=bad)  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_tiny(tmp_path_factory.mktemp("weights") / "tiny.safetensors")


def test_cli_detect_every(
    weights: Path, tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    made: list[FaceFinder] = []

    class Spy(FaceFinder):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            made.append(self)

    monkeypatch.setattr(analysis, "FaceFinder", Spy)
    video = write_video(tmp_path / "cross.avi", crossing_frames())
    args = ["-q", "predict", str(video), "--model", str(weights), "--format", "json"]
    assert main([*args, "--detector", "alt2", "--detect-every", "3"]) == 0
    assert '"track"' in capsys.readouterr().out
    # bridged where the faces are apart (they meet and one hides the other: every frame there)
    assert made[-1].every == 3 and 0 < made[-1].detections < 40
    assert main([*args, "--detector", "alt2"]) == 0  # default: every frame for Haar
    assert made[-1].every is None and made[-1].detections == 40
    for bad in ("0", "-2", "1.5", "x"):
        with pytest.raises(SystemExit) as exit_:
            main([*args, "--detect-every", bad])
        assert exit_.value.code == 2
        assert "--detect-every" in capsys.readouterr().err
