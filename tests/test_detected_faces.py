"""Training faces cut from whole photos by a face detector, exactly as `qcsfer predict` cuts them
(data/detected_faces.py)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from qcsfer.data.detected_faces import load_detected_faces
from qcsfer.data.images import decode
from qcsfer.data.records import LabeledImages
from qcsfer.data.splits import Split
from qcsfer.imaging import read_image
from qcsfer.inference.faces import Face, crop_face
from qcsfer.inference.model_input import stack_crops
from qcsfer.preprocessing import Preprocessing

PREP = Preprocessing(image_size=32, load_size=32, grayscale=True)
BOX = Face(60, 70, 100, 110)  # a 40 px face low and right of the centre of a 160 x 192 photo


class FixedDetector:
    """Finds the face at BOX (and a smaller one) in every photo, or nothing."""

    name = "fixed"
    margin = 0.25

    def __init__(self, finds: bool = True) -> None:
        self.finds = finds
        self.calls = 0

    def detect(self, image: np.ndarray) -> list[Face]:
        self.calls += 1
        return [Face(5, 5, 15, 15), BOX] if self.finds else []


class NoCalls(FixedDetector):
    def detect(self, image: np.ndarray) -> list[Face]:
        raise AssertionError("the cached store should have been read")


def photos(tmp_path: Path, n: int = 3) -> list[Path]:
    rng = np.random.default_rng(0)
    paths = []
    for i in range(n):
        pixels = rng.integers(0, 255, (192, 160, 3), dtype=np.uint8)
        pixels[BOX.y0 : BOX.y1, BOX.x0 : BOX.x1] = 255  # the "face"
        paths.append(tmp_path / f"photo_{i}.png")
        Image.fromarray(pixels).save(paths[-1])
    return paths


def test_the_largest_face_is_cut_as_predict_cuts_it(tmp_path: Path) -> None:
    paths = photos(tmp_path)
    detector = FixedDetector()
    store = load_detected_faces(paths, PREP, detector, cache_dir=None)
    assert store.valid.all() and detector.calls == len(paths)
    for path, got in zip(paths, store.images.numpy(), strict=True):
        expected = stack_crops([crop_face(read_image(path), BOX, detector.margin)], PREP)[0]
        np.testing.assert_array_equal(got, expected)
    # the bright face square fills the centre of the crop, widened by the margin on each side
    centre = store.images[0, 0, 12:20, 12:20].float().mean()
    assert centre > 240 and store.images[0, 0, :3].float().mean() < 200


def test_no_face_keeps_the_centred_framing_and_is_counted(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    paths = photos(tmp_path, 2)
    store = load_detected_faces(paths, PREP, FixedDetector(finds=False), None, 0.7, "tcce/train")
    for path, got in zip(paths, store.images.numpy(), strict=True):
        np.testing.assert_array_equal(got, decode(path, PREP.load_size, True, 0.7))
    assert "tcce/train: fixed found no face in 2 of 2 photos" in caplog.text


def test_unreadable_photos_are_skipped_and_the_store_is_cached(tmp_path: Path) -> None:
    paths = photos(tmp_path, 2)
    (tmp_path / "broken.jpg").write_bytes(b"not an image")
    paths.append(tmp_path / "broken.jpg")
    first = load_detected_faces(paths, PREP, FixedDetector(), tmp_path / "cache")
    assert first.valid.tolist() == [True, True, False]
    again = load_detected_faces(paths, PREP, NoCalls(), tmp_path / "cache")
    np.testing.assert_array_equal(again.images.numpy(), first.images.numpy())
    other_fallback = FixedDetector()
    load_detected_faces(paths, PREP, other_fallback, tmp_path / "cache", fallback_framing=0.7)
    assert other_fallback.calls == 2  # another framing is another cache file


def test_a_split_of_detected_faces_stays_in_memory(tmp_path: Path) -> None:
    paths = photos(tmp_path, 2)
    records = LabeledImages(
        name="tcce",
        split="train",
        classes=("neutral", "happiness"),
        paths=tuple(paths),
        labels=np.array([0, 1]),
    )
    split = Split.load(records, PREP, "disk", None, 0.7, FixedDetector())
    expected = load_detected_faces(paths, PREP, FixedDetector(), None, 0.7)
    loaded, valid = split.images.load(np.array([0, 1]))
    assert valid.all()
    np.testing.assert_array_equal(loaded.numpy(), expected.images.numpy())
