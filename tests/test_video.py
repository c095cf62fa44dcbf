"""Video: tracking, smoothing, streaming outputs, corrupt and interrupted videos.

Videos are made in tmp_path with OpenCV from the packaged astronaut photo: its face (and its
mirror image, a second "person") moving over a plain background. Haar finds both reliably.
"""

from __future__ import annotations

import csv
import gc
import io
import itertools
import json
import math
from collections.abc import Iterable
from pathlib import Path

import cv2
import numpy as np
import pytest

from qcsfer.cli import main
from qcsfer.imaging import ImageTooLarge
from qcsfer.inference import ExpressionRecognizer, ImageError
from qcsfer.inference.faces import Face
from qcsfer.inference.haar import HaarDetector
from qcsfer.inference.runner import run_predict
from qcsfer.inference.video import io as video_io
from qcsfer.inference.video.io import FrameReader
from qcsfer.inference.video.smoothing import ProbabilitySmoother
from qcsfer.inference.video.summary import summarize_tracks
from qcsfer.inference.video.timeline import Timeline, draw_timeline
from qcsfer.inference.video.tracking import Tracker, distinct, iou

from .test_inference import save_tiny

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
    detector = HaarDetector()
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


# -- memory on long videos ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"fps": math.nan}, "fps must be a finite number > 0, got nan"),
        ({"fps": math.inf}, "fps must be a finite number > 0, got inf"),
        ({"start": math.nan}, "start must be a finite number of seconds >= 0, got nan$"),
        ({"start": math.inf}, "start must be a finite number of seconds >= 0, got inf$"),
        ({"start": -1.0}, "start must be a finite number of seconds >= 0, got -1.0$"),
        ({"end": math.nan}, "need start < end, a finite number of seconds; got 0.0, nan"),
        ({"end": math.inf}, "need start < end, a finite number of seconds; got 0.0, inf"),
        ({"start": 5.0, "end": 2.0}, "need start < end, a finite number of seconds; got 5.0, 2.0"),
    ],
)
def test_sampling_options_that_are_not_finite_are_refused(options: dict, message: str) -> None:
    """nan used to pass the range checks: one frame sampled, or a raw error while reading."""
    with pytest.raises(ValueError, match=message):
        FrameReader("clip.avi", **options)


@pytest.mark.parametrize("tau", [math.nan, math.inf])
def test_a_smoothing_constant_that_is_not_finite_is_refused(tau: float) -> None:
    with pytest.raises(ValueError, match=f"finite seconds >= 0, got {tau}"):
        ProbabilitySmoother(tau=tau)


def test_drawn_timelines_leave_no_figure_behind(tmp_path: Path) -> None:
    """Each ended track's figure is freed when drawn, not when the cyclic collector next runs
    (figures of a long video's tracks would pile up until then)."""
    from matplotlib.figure import Figure

    timeline = Timeline()
    for second in range(30):
        timeline.add(float(second), np.full(8, 1 / 8))
    classes = [f"class{i}" for i in range(8)]
    gc.collect()
    gc.disable()  # only what draw_timeline frees itself counts
    try:
        for track in range(3):
            draw_timeline(timeline, classes, tmp_path / f"track-{track}.png", "t", 2.5)
        # type(), not isinstance(): isinstance reads __class__, which some of torch's deprecated
        # module attributes answer with a warning
        alive = [o for o in gc.get_objects() if type(o) is Figure]
    finally:
        gc.enable()
    assert alive == []
    assert len(list(tmp_path.glob("track-*.png"))) == 3


# -- reading: corrupt and truncated files ---------------------------------------------------------


def corrupt_copy(video: Path, target: Path, frame: int) -> Path:
    """The MJPG video with the JPEG data of one frame scrambled (its header left intact)."""
    data = bytearray(video.read_bytes())
    starts = [i for i in range(len(data) - 1) if data[i] == 0xFF and data[i + 1] == 0xD8]
    at = starts[frame]
    for k in range(at + 200, at + 3000):
        data[k] = (data[k] * 7 + 13) & 0xFF
    target.write_bytes(bytes(data))
    return target


def test_corrupt_frames_are_skipped_and_counted_truncation_reported(tmp_path: Path) -> None:
    frames = [compose([(face_sprite(), 10 * i, 60)]) for i in range(20)]
    video = write_video(tmp_path / "clip.avi", frames)
    reader = FrameReader(corrupt_copy(video, tmp_path / "corrupt.avi", 10))
    indices = [s.index for s in reader]
    assert indices == [i for i in range(20) if i != 10]  # the frames after it keep their index
    assert reader.stats.corrupt == 1 and not reader.stats.truncated
    assert "1 undecodable frame(s) skipped" in reader.stats.problems()
    # A file cut in half: its header still declares 20 frames.
    data = video.read_bytes()
    (tmp_path / "cut.avi").write_bytes(data[: len(data) // 2])
    reader = FrameReader(tmp_path / "cut.avi", every=2)
    sampled = list(reader)
    assert 0 < len(sampled) < 10 and reader.stats.truncated and reader.stats.corrupt == 0
    assert "of the 20 frames its header declares" in reader.stats.problems()[0]
    # --start / --end in seconds, --fps sampling by time.
    reader = FrameReader(video, fps=2.5, start=0.5, end=1.5)
    assert [round(s.time, 2) for s in reader] == [0.5, 0.9, 1.3]
    with pytest.raises(ImageError, match="no decodable frame after 5 s"):
        list(FrameReader(video, start=5.0))


def test_frames_over_the_pixel_limit_are_refused_before_decoding(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    video = write_video(tmp_path / "clip.avi", [compose([])] * 3)
    pixels = SIZE[0] * SIZE[1]
    assert len(list(FrameReader(video, max_pixels=pixels))) == 3
    reader = FrameReader(video, max_pixels=pixels - 1)
    with pytest.raises(ImageTooLarge, match=f"480 x 270 = {pixels} pixels > {pixels - 1}"):
        list(reader)
    assert reader.stats.decoded == 0  # told by the header: nothing decoded
    monkeypatch.setattr(video_io, "MAX_PIXELS", pixels - 1)  # the image limit is the default
    assert main(["predict", str(video), "--model", "default"]) == 1  # one input skipped
    assert f"clip.avi: video frames too large (480 x 270 = {pixels} pixels" in (
        capsys.readouterr().err
    )


# -- the whole pipeline: API, CLI outputs, interruption -------------------------------------------


@pytest.fixture(scope="module")
def weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_tiny(tmp_path_factory.mktemp("weights") / "tiny.safetensors")


@pytest.fixture(scope="module")
def crossing(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_video(tmp_path_factory.mktemp("video") / "cross.avi", crossing_frames())


def test_recognizer_video_api_tracks_and_summaries(weights: Path, crossing: Path) -> None:
    recognizer = ExpressionRecognizer(weights, detector="alt2")
    frames = list(recognizer.video(crossing, every=2, tau=1.0))
    assert [f.frame for f in frames] == list(range(0, 40, 2))
    assert [f.time for f in frames] == pytest.approx([i / FPS for i in range(0, 40, 2)])
    faces = [p for f in frames for p in f.predictions]
    assert {p.track for p in faces} == {1, 2}
    for p in faces:
        assert p.label == max(p.probabilities, key=p.probabilities.__getitem__)
        assert sum(p.raw.values()) == pytest.approx(1.0)
    tracks = summarize_tracks(frames)
    assert [t.track for t in tracks] == [1, 2]
    for t in tracks:
        assert t.first_seen == 0.0 and t.last_seen == pytest.approx(3.8)
        assert 2.5 < t.seconds <= 4.0  # on screen all along, one hidden for a while
        assert sum(t.shares.values()) == pytest.approx(1.0) and t.dominant in t.shares


def test_cli_video_outputs(weights: Path, crossing: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "out"
    args = ["-q", "predict", str(crossing), "--model", str(weights), "--out", str(out)]
    args += ["--detector", "alt2"]  # the one the tracking tests above use
    code = main([*args, "--every", "2", "--format", "json"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    document = json.loads(captured.out)
    records = document["results"]
    assert len(records) == 20 and records[1]["time"] == pytest.approx(0.2)
    assert {face["track"] for r in records for face in r["faces"]} == {1, 2}
    assert "raw_probabilities" in records[0]["faces"][0]
    folder = out / "cross"
    with open(folder / "frames.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == sum(len(r["faces"]) for r in records)
    assert {"time", "track", "label", "p_happiness", "raw_happiness"} <= set(rows[0])
    tracks = json.loads((folder / "tracks.json").read_text())
    assert [t["track"] for t in tracks["tracks"]] == [1, 2]
    assert tracks["reading"]["interrupted"] is False
    assert sorted(p.name for p in (folder / "timelines").iterdir()) == [
        "track-1.png",
        "track-2.png",
    ]
    (video,) = folder.glob("annotated.*")
    capture = cv2.VideoCapture(str(video))
    assert int(capture.get(cv2.CAP_PROP_FRAME_COUNT)) == 20  # the sampled frames
    assert capture.get(cv2.CAP_PROP_FPS) == pytest.approx(FPS / 2)  # so it keeps its speed
    capture.release()
    assert document["summary"]["annotated"] == [str(video)]


def test_an_interrupted_run_leaves_valid_outputs(
    weights: Path, crossing: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    recognizer = ExpressionRecognizer(weights, detector="alt2")
    forward = recognizer.logits
    calls = []

    def interrupted_on_third_batch(batch: np.ndarray) -> np.ndarray:
        calls.append(len(batch))
        if len(calls) == 3:
            raise KeyboardInterrupt  # as Ctrl-C lands in the middle of the model's work
        return forward(batch)

    monkeypatch.setattr(recognizer, "logits", interrupted_on_third_batch)
    stdout, stderr = io.StringIO(), io.StringIO()
    out = tmp_path / "out"
    with pytest.raises(KeyboardInterrupt):
        run_predict(
            recognizer, [str(crossing)], fmt="json", out_dir=out, stdout=stdout, stderr=stderr
        )
    assert "interrupted" in stderr.getvalue()
    done = 16  # two batches of 8 frames
    assert len(json.loads(stdout.getvalue())["results"]) == done
    folder = out / "cross"
    lines = (folder / "frames.jsonl").read_text().splitlines()
    assert [json.loads(line)["frame"] for line in lines] == list(range(done))
    with open(folder / "frames.csv", newline="") as handle:
        assert {int(row["frame"]) for row in csv.DictReader(handle)} <= set(range(done))
    tracks = json.loads((folder / "tracks.json").read_text())
    assert tracks["reading"]["interrupted"] is True and len(tracks["tracks"]) == 2
    capture = cv2.VideoCapture(str(next(folder.glob("annotated.*"))))
    assert int(capture.get(cv2.CAP_PROP_FRAME_COUNT)) == done
    assert capture.read()[0]
    capture.release()
