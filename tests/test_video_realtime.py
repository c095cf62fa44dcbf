"""Video in real time: detection bridged by the tracker, cameras read without falling behind."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import ClassVar

import cv2
import numpy as np
import pytest

from qcsfer.imaging import ImageError
from qcsfer.inference import ExpressionRecognizer
from qcsfer.inference.detection.blazeface import BlazeFaceDetector
from qcsfer.inference.faces import Face
from qcsfer.inference.video.detect import Downscaled, FaceFinder
from qcsfer.inference.video.io import FrameReader
from qcsfer.inference.video.tracking import Tracker

from .test_inference import save_tiny
from .test_video import crossing_frames, write_video


class Moving:
    """A detector that sees one face moving right at 10 px per frame, counting its calls."""

    name = "moving"
    margin = 0.0

    def __init__(self) -> None:
        self.calls = 0

    def detect(self, rgb: np.ndarray) -> list[Face]:
        x = int(rgb[0, 0, 0]) * 10  # the frame number is written in the first pixel
        self.calls += 1
        return [Face(x, 20, x + 40, 60, 0.9, ((x + 10.0, 30.0), (x + 30.0, 30.0)))]


def frame(index: int) -> np.ndarray:
    image = np.zeros((120, 400, 3), np.uint8)
    image[0, 0, 0] = index
    return image


def test_bridged_frames_move_faces_by_their_velocity_between_detections() -> None:
    detector = Moving()
    finder = FaceFinder(detector, Tracker(), interval=0.1)
    found = [finder.find(frame(i), i / 15) for i in range(10)]
    assert detector.calls == finder.detections == 5  # every other frame at 15 frames/s
    assert all(ids == [1] for _, ids in found)  # one track throughout
    for i, (faces, _) in enumerate(found[2:], start=2):  # velocity known from frame 2 on
        assert faces[0].x0 == pytest.approx(10 * i, abs=1), i  # bridged where it really is
        assert faces[0].landmarks[0][0] == pytest.approx(10 * i + 10, abs=1)


def test_interval_zero_detects_every_frame() -> None:
    detector = Moving()
    finder = FaceFinder(detector, Tracker(), interval=0.0)
    for i in range(6):
        finder.find(frame(i), i / 15)
    assert detector.calls == 6
    with pytest.raises(ValueError, match="interval"):
        FaceFinder(detector, Tracker(), interval=float("nan"))


def test_a_detector_with_its_own_small_input_is_not_downscaled_first() -> None:
    blazeface = BlazeFaceDetector("back")
    assert Downscaled(blazeface, 640).side == 0  # letterboxed to 256 px in one resize
    assert Downscaled(Moving(), 640).side == 640


@pytest.fixture(scope="module")
def weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_tiny(tmp_path_factory.mktemp("weights") / "tiny.safetensors")


def test_blazeface_video_bridges_and_keeps_both_tracks(weights: Path, tmp_path: Path) -> None:
    video = write_video(tmp_path / "cross.avi", crossing_frames())
    recognizer = ExpressionRecognizer(weights, detector="blazeface-back")
    analysis = recognizer.video(video)  # 10 frames/s: detection on every frame 0.1 s apart
    assert analysis.finder.interval == pytest.approx(0.1)
    frames = list(analysis)
    assert {p.track for f in frames for p in f.predictions} == {1, 2}
    slower = recognizer.video(video, detect_interval=0.2)
    frames = list(slower)
    # every other frame, but every frame while the faces are near (FaceFinder's crossing rule)
    assert 20 < slower.finder.detections < 40
    plain = recognizer.video(video, detect_interval=0.2)
    plain.finder.search = False
    list(plain)
    assert plain.finder.detections == 20  # without the rule: every other frame throughout
    assert {p.track for f in frames for p in f.predictions} == {1, 2}
    assert sum(len(f.predictions) == 2 for f in frames) >= 0.7 * len(frames)


class FakeCamera:
    """A camera giving `count` frames at `fps` (their number in the first pixel), then none."""

    opened: ClassVar[list[FakeCamera]] = []

    def __init__(self, index: int, count: int = 60, fps: float = 200.0) -> None:
        self.count, self.period, self.given = count, 1 / fps, 0
        self.released = False
        FakeCamera.opened.append(self)

    def isOpened(self) -> bool:
        return True

    def get(self, prop: int) -> float:
        return {cv2.CAP_PROP_FRAME_WIDTH: 64, cv2.CAP_PROP_FRAME_HEIGHT: 48}.get(prop, 0.0)

    def read(self) -> tuple[bool, np.ndarray | None]:
        time.sleep(self.period)
        if self.given >= self.count:
            return False, None
        image = np.zeros((48, 64, 3), np.uint8)
        image[0, 0, 0] = self.given % 256
        self.given += 1
        return True, image

    def release(self) -> None:
        self.released = True


def test_a_slow_reader_of_a_camera_drops_frames_and_never_falls_behind(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    FakeCamera.opened.clear()
    monkeypatch.setattr(cv2, "VideoCapture", FakeCamera)
    reader = FrameReader("webcam:0")
    taken = []
    for sampled in reader:
        taken.append(sampled.index)
        time.sleep(0.02)  # slower than the camera's 200 frames/s
    stats = reader.stats
    assert stats.live and stats.decoded == 60
    assert len(taken) < 30 and stats.dropped == 60 - len(taken) > 0
    assert taken == sorted(set(taken))  # newest frames, in order, none twice
    assert "analysed" in stats.progress() and "dropped" in stats.progress()
    assert FakeCamera.opened[0].released
    assert not any(t.name == "qcsfer-camera" for t in threading.enumerate())


def test_a_camera_stopped_early_stops_its_reading_thread(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cv2, "VideoCapture", lambda index: FakeCamera(index, count=10**6))
    for _ in FrameReader("webcam:0"):
        break  # the caller stops (Ctrl-C, an error, enough frames)
    assert not any(t.name == "qcsfer-camera" for t in threading.enumerate())


def test_a_camera_that_gives_no_frame_is_an_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cv2, "VideoCapture", lambda index: FakeCamera(index, count=0, fps=1e4))
    with pytest.raises(ImageError, match="no decodable frame"):
        list(FrameReader("webcam:0"))
