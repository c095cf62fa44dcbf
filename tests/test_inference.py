"""Inference: detection, the recognizer, ONNX export, the predict/export/explain CLI.

A random `tiny` network stands in for the shipped model: these tests check plumbing and
numerical agreement (API vs CLI, ONNX vs PyTorch, inference vs the training pipeline), not
accuracy.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import math
import os
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from PIL import Image

from qcsfer.cli import main
from qcsfer.data.images import load_images
from qcsfer.data.transforms import eval_transform
from qcsfer.imaging import read_image
from qcsfer.inference import ExpressionRecognizer, Face, HaarDetector, ImageError
from qcsfer.inference import mtcnn as mtcnn_module
from qcsfer.inference.annotate import LANDMARK_COLOR, annotate
from qcsfer.inference.contract import card_from_embedded
from qcsfer.inference.detectors import make_detector
from qcsfer.inference.explain import (
    class_token_attention,
    csa_maps,
    explain,
)
from qcsfer.inference.export import export_onnx, onnx_model_bytes
from qcsfer.inference.faces import crop_box, crop_face, sort_faces
from qcsfer.inference.model_input import numpy_eval_transform, stack_crops
from qcsfer.inference.mtcnn import MTCNNDetector
from qcsfer.inference.results import Prediction
from qcsfer.inference.runner import Progress
from qcsfer.models import BaseNetwork, QCSModel, get_config
from qcsfer.models.weights import network_card, save_weights
from qcsfer.preprocessing import IMAGENET_MEAN, IMAGENET_STD, Preprocessing
from qcsfer.pretrained import load_model

from .conftest import FERPLUS, PHOTOS

ASTRONAUT = PHOTOS / "astronaut.png"
COFFEE = PHOTOS / "coffee.png"
FER_FACES = [FERPLUS / "FER2013Valid" / name for name in ("fer0028642.png", "fer0028643.png")]
CLASSES = ["neutral", "happiness", "surprise", "sadness", "anger", "disgust", "fear", "contempt"]
GRAY_48 = {
    "image_size": 48,
    "load_size": 48,
    "grayscale": True,
    "mean": list(IMAGENET_MEAN),
    "std": list(IMAGENET_STD),
}


def save_tiny(path: Path, preprocessing: dict = GRAY_48, **config: object) -> Path:
    torch.manual_seed(0)
    model = BaseNetwork(get_config("tiny", num_classes=len(CLASSES), **config))
    with torch.no_grad():  # a sharper head than the init's, so classes differ visibly
        model.vit.head.weight.mul_(50)
    return save_weights(
        model,
        path,
        network_card(
            model,
            classes=CLASSES,
            preprocessing=preprocessing,
            provenance={"note": "random weights for tests"},
        ),
    )


@pytest.fixture(scope="module")
def weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_tiny(tmp_path_factory.mktemp("weights") / "tiny.safetensors")


@pytest.fixture(scope="module")
def rec(weights: Path) -> ExpressionRecognizer:
    return ExpressionRecognizer(weights)


@pytest.fixture(scope="module")
def onnx_path(weights: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    base, card = load_model(weights)
    return export_onnx(base, card, tmp_path_factory.mktemp("onnx") / "tiny.onnx").path


def fer_faces() -> list[Path]:
    if not all(p.is_file() for p in FER_FACES):
        pytest.skip(f"FERPlus faces not found under {FERPLUS}")
    return FER_FACES


def astronaut_face(side: int) -> np.ndarray:
    """The astronaut's head (a loose crop around the detected face), resized to side x side."""
    image = Image.open(ASTRONAUT).convert("RGB").crop((150, 40, 298, 188))
    return np.asarray(image.resize((side, side), Image.BICUBIC))


@pytest.fixture(scope="module")
def three_faces(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[tuple[int, int]]]:
    """Three faces of 170 px on plain gray; the leftmost is the lowest, so order is by x."""
    faces = [astronaut_face(170)] + [
        np.asarray(Image.open(p).convert("RGB").resize((170, 170), Image.BICUBIC))
        for p in fer_faces()
    ]
    canvas = np.full((340, 720, 3), 128, dtype=np.uint8)
    corners = [(30, 140), (270, 30), (510, 90)]  # (x, y) of each pasted square
    for face, (x, y) in zip(faces, corners, strict=True):
        canvas[y : y + 170, x : x + 170] = face
    path = tmp_path_factory.mktemp("composed") / "three_faces.png"
    Image.fromarray(canvas).save(path)
    return path, corners


def inside(box: tuple[int, int, int, int], corner: tuple[int, int], side: int = 170) -> bool:
    cx, cy = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
    return corner[0] <= cx < corner[0] + side and corner[1] <= cy < corner[1] + side


def probs_close(a: dict[str, float], b: dict[str, float], tol: float) -> bool:
    return a.keys() == b.keys() and all(abs(a[k] - b[k]) <= tol for k in a)


# ---------------------------------------------------------------------------- detection


def test_detector_finds_the_astronaut_and_nothing_in_the_coffee() -> None:
    detector = HaarDetector()
    faces = detector.detect(read_image(ASTRONAUT))
    assert len(faces) == 1
    face = faces[0]
    assert 150 < (face.x0 + face.x1) / 2 < 300 and 60 < (face.y0 + face.y1) / 2 < 180
    assert 60 < face.width < 160 and face.score is not None and face.score >= 1
    assert detector.detect(read_image(COFFEE)) == []


def test_three_faces_in_stable_left_to_right_order(
    rec: ExpressionRecognizer, three_faces: tuple[Path, list[tuple[int, int]]]
) -> None:
    path, corners = three_faces
    predictions = rec(path)
    assert len(predictions) == 3
    assert [p.box[0] for p in predictions] == sorted(p.box[0] for p in predictions)
    for prediction, corner in zip(predictions, corners, strict=True):
        assert inside(prediction.box, corner), (prediction.box, corner)
    assert [p.box for p in rec(path)] == [p.box for p in predictions]  # deterministic
    shuffled = [Face(5, 50, 9, 60), Face(0, 90, 4, 95), Face(0, 10, 4, 20)]
    assert [f.y0 for f in sort_faces(shuffled)] == [10, 90, 50]


def test_huge_images_are_detected_downscaled_with_boxes_in_original_pixels() -> None:
    small = read_image(ASTRONAUT)
    big = np.asarray(Image.fromarray(small).resize((1536, 1536), Image.BICUBIC))
    (reference,) = HaarDetector().detect(small)
    (face,) = HaarDetector(max_side=512).detect(big)  # detection runs at 512 px
    for ours, theirs in zip(face.box, reference.box, strict=True):
        assert abs(ours - 3 * theirs) <= 6
    assert HaarDetector(max_side=512).detect(big[:20, :20]) == []  # below the minimum face size


@pytest.fixture(scope="module")
def mtcnn() -> MTCNNDetector:
    return MTCNNDetector()


def eye_angle(face: Face) -> float:
    """Degrees the line from the left to the right eye dips below the horizontal."""
    assert face.landmarks is not None
    (left_x, left_y), (right_x, right_y) = face.landmarks[:2]
    return math.degrees(math.atan2(right_y - left_y, right_x - left_x))


def test_mtcnn_finds_the_astronaut_with_landmarks_and_nothing_in_the_coffee(
    mtcnn: MTCNNDetector,
) -> None:
    (face,) = mtcnn.detect(read_image(ASTRONAUT))
    (haar,) = HaarDetector().detect(read_image(ASTRONAUT))
    assert abs(face.x0 - haar.x0) < 25 and abs(face.x1 - haar.x1) < 25
    assert face.score is not None and 0.9 < face.score <= 1
    assert face.landmarks is not None and len(face.landmarks) == 5
    (eye_l, eye_r, nose, mouth_l, mouth_r) = face.landmarks
    for x, y in face.landmarks:
        assert face.x0 <= x < face.x1 and face.y0 <= y < face.y1
    assert eye_l[0] < nose[0] < eye_r[0] and mouth_l[0] < mouth_r[0]
    assert max(eye_l[1], eye_r[1]) < nose[1] < min(mouth_l[1], mouth_r[1])
    assert mtcnn.detect(read_image(COFFEE)) == []
    gray = cv2.cvtColor(read_image(ASTRONAUT), cv2.COLOR_RGB2GRAY)
    assert len(mtcnn.detect(gray)) == 1


@pytest.mark.parametrize("degrees", [15, -20])
def test_aligned_crops_level_the_eyes(mtcnn: MTCNNDetector, degrees: int) -> None:
    tilted = np.asarray(Image.open(ASTRONAUT).convert("RGB").rotate(degrees, Image.BICUBIC))
    (face,) = mtcnn.detect(tilted)
    assert abs(eye_angle(face)) > 8
    plain, aligned = crop_face(tilted, face, 0.3), crop_face(tilted, face, 0.3, align=True)
    assert aligned.shape == plain.shape
    (again,) = mtcnn.detect(aligned)
    assert abs(eye_angle(again)) < 4
    assert crop_face(tilted, Face(*face.box), 0.3, align=True).tolist() == plain.tolist()


def test_mtcnn_refines_many_candidates_in_bounded_calls(
    mtcnn: MTCNNDetector, monkeypatch: pytest.MonkeyPatch
) -> None:
    """However many candidates an image has, R-Net/O-Net calls stay at REFINE_BATCH (memory the
    allocator keeps for the largest call does not grow on a long video), with the same result."""
    generator = torch.Generator().manual_seed(0)
    image = torch.rand(1, 3, 120, 200, generator=generator) * 2 - 1
    corner = torch.rand(150, 2, generator=generator) * torch.tensor([180.0, 100.0])
    boxes = torch.cat([corner, corner + 12 + 30 * torch.rand(150, 1, generator=generator)], 1)
    sizes: list[int] = []
    forward = mtcnn.onet.forward

    def counted(x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        sizes.append(len(x))
        return forward(x)

    monkeypatch.setattr(mtcnn.onet, "forward", counted)
    with torch.inference_mode():
        chunked = mtcnn._refine(mtcnn.onet, image, boxes, 48, 0.0)
        monkeypatch.setattr(mtcnn_module, "REFINE_BATCH", len(boxes))
        whole = mtcnn._refine(mtcnn.onet, image, boxes, 48, 0.0)
    assert sizes == [64, 64, 22, 150]
    for ours, one_call in zip(chunked, whole, strict=True):
        assert torch.allclose(ours, one_call, atol=1e-5)


def test_mtcnn_without_its_weights_says_how_to_install_them(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(mtcnn_module.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ImportError, match="pip install --no-deps facenet-pytorch"):
        MTCNNDetector()


def test_recognizer_with_mtcnn_and_alignment_reports_landmarks(weights: Path) -> None:
    rec = ExpressionRecognizer(weights, detector="mtcnn", align=True)
    (prediction,) = rec(ASTRONAUT)
    assert prediction.landmarks is not None and len(prediction.landmarks) == 5
    record = json.loads(json.dumps(prediction.to_dict()))
    assert len(record["landmarks"]) == 5 and 0.9 < record["detector_score"] <= 1
    assert rec(COFFEE) == []
    x, y = (round(v) for v in prediction.landmarks[2])  # the nose tip, drawn as a dot
    assert tuple(annotate(read_image(ASTRONAUT), [prediction])[y, x]) == LANDMARK_COLOR


def test_auto_detector_is_mtcnn_when_installed_else_haar_with_a_notice(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    assert isinstance(make_detector("auto"), MTCNNDetector)  # `make setup` installs its weights
    monkeypatch.setattr(mtcnn_module.importlib.util, "find_spec", lambda name: None)
    with caplog.at_level(logging.WARNING):
        detector = make_detector("auto")
    assert isinstance(detector, HaarDetector) and detector.name == "alt2"
    (notice,) = [r.getMessage() for r in caplog.records]
    assert "pip install --no-deps facenet-pytorch" in notice and "\n" not in notice


def test_recognizer_crops_with_its_detectors_own_margin(weights: Path) -> None:
    haar = ExpressionRecognizer(weights, detector="alt2")
    assert haar.margin == HaarDetector.margin
    assert ExpressionRecognizer(weights, detector="mtcnn").margin == MTCNNDetector.margin
    assert ExpressionRecognizer(weights, detector="mtcnn", margin=0.3).margin == 0.3
    batch = haar.prepare(ASTRONAUT, keep_crops=True)
    ((face,), (crop,)) = batch.faces, batch.crops
    assert crop.shape[0] == round(face.width * (1 + 2 * HaarDetector.margin))
    (wider,) = haar.prepare(ASTRONAUT, boxes=[face.box], margin=0.3, keep_crops=True).crops
    assert wider.shape[0] == round(face.width * 1.6)
    with pytest.raises(ValueError, match="margin must be"):
        ExpressionRecognizer(weights, margin=-0.5)
    haar.detector = make_detector("mtcnn")  # swapped in, as `qcsfer serve` does per request
    assert haar.margin == MTCNNDetector.margin


def test_crops_are_square_centred_and_edge_padded() -> None:
    image = np.arange(100 * 80 * 3, dtype=np.uint32).reshape(100, 80, 3).astype(np.uint8)
    face = Face(0, 0, 20, 30)  # touches the top-left corner
    x0, y0, x1, y1 = crop_box(face, margin=0.5)
    assert x1 - x0 == y1 - y0 == 60 and (x0 + x1) / 2 == 10 and (y0 + y1) / 2 == 15
    crop = crop_face(image, face, margin=0.5)
    assert crop.shape == (60, 60, 3)
    assert (crop[:15, 20] == image[0, 0]).all()  # rows above the image repeat its first row
    assert (crop[15:, 20] == image[:45, 0]).all()  # real pixels where the image has them
    inner = crop_face(image, Face(30, 40, 50, 60), margin=0.0)
    assert (inner == image[40:60, 30:50]).all()


# ---------------------------------------------------------------------------- preprocessing


@pytest.mark.parametrize(
    ("grayscale", "load_size", "image_size"), [(True, 48, 48), (False, 56, 48), (True, 60, 52)]
)
def test_numpy_preprocessing_equals_eval_transform(
    grayscale: bool, load_size: int, image_size: int
) -> None:
    prep = Preprocessing(image_size=image_size, load_size=load_size, grayscale=grayscale)
    channels = 1 if grayscale else 3
    batch = np.random.default_rng(0).integers(0, 256, (4, channels, load_size, load_size))
    batch = batch.astype(np.uint8)
    expected = eval_transform(torch.from_numpy(batch), prep).numpy()
    got = numpy_eval_transform(batch, prep)
    assert got.shape == expected.shape == (4, 3, image_size, image_size)
    assert np.abs(got - expected).max() <= 1e-5


def test_inference_input_equals_the_training_pipeline(
    rec: ExpressionRecognizer, weights: Path
) -> None:
    """A pre-cropped FERPlus face gives exactly the probabilities evaluation computes."""
    paths = fer_faces()
    results = ExpressionRecognizer(weights, detect=False).predict_many(paths)
    store = load_images(paths, 48, grayscale=True)
    base, _ = load_model(weights)
    with torch.no_grad():
        logits = base(eval_transform(store.images, Preprocessing.from_dict(GRAY_48)))
    expected = torch.softmax(logits, dim=1).numpy()
    for result, row in zip(results, expected, strict=True):
        (prediction,) = result.predictions
        assert prediction.box == (0, 0, 48, 48) and prediction.detector_score is None
        assert np.abs(np.array(list(prediction.probabilities.values())) - row).max() < 1e-6
        assert prediction.label == CLASSES[int(row.argmax())]


# ---------------------------------------------------------------------------- recognizer API


def test_arrays_pil_and_paths_agree(rec: ExpressionRecognizer) -> None:
    rgb = read_image(ASTRONAUT)
    expected = rec(ASTRONAUT)
    for image, color in [
        (str(ASTRONAUT), "rgb"),
        (rgb, "rgb"),
        (rgb[:, :, ::-1].copy(), "bgr"),
        (Image.open(ASTRONAUT), "rgb"),
        (rgb.astype(np.float32) / 255, "rgb"),
    ]:
        got = rec(image, color=color)
        assert [p.box for p in got] == [p.box for p in expected]
        assert probs_close(got[0].probabilities, expected[0].probabilities, 1e-6)
    swapped = rec(rgb[:, :, ::-1].copy(), color="rgb")  # wrong order: still runs
    assert len(swapped) == 1
    with pytest.raises(ValueError, match="color"):
        rec(rgb, color="hsv")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="path, PIL image or numpy array"):
        rec(42)  # type: ignore[arg-type]


def test_given_boxes_and_no_detect(rec: ExpressionRecognizer, weights: Path) -> None:
    (prediction,) = rec(ASTRONAUT, boxes=[(178, 69, 270, 161)])
    assert prediction.box == (178, 69, 270, 161) and prediction.detector_score is None
    clipped = rec(ASTRONAUT, boxes=[(-10, -10, 50, 50)])
    assert clipped[0].box == (0, 0, 50, 50)
    with pytest.raises(ValueError, match="does not overlap"):
        rec(ASTRONAUT, boxes=[(600, 600, 700, 700)])
    whole = ExpressionRecognizer(weights, detect=False)(COFFEE)
    assert [p.box for p in whole] == [(0, 0, 600, 400)]


def test_predict_frame_labels_the_whole_result(rec: ExpressionRecognizer) -> None:
    rgb = np.asarray(Image.open(ASTRONAUT).convert("RGB"))
    result = rec.predict_frame(rgb, source="webcam", frame=7, keep_image=True)
    assert (result.source, result.frame, result.width, result.height) == (
        "webcam",
        7,
        rgb.shape[1],
        rgb.shape[0],
    )
    assert np.array_equal(result.image, rgb)
    assert [p.box for p in result.predictions] == [p.box for p in rec(rgb)]
    with pytest.raises(ImageError):
        rec.predict_frame(np.zeros((4, 4, 5), np.uint8), source="webcam")


def test_predict_many_batches_faces_across_images(
    weights: Path, three_faces: tuple[Path, list[tuple[int, int]]]
) -> None:
    rec = ExpressionRecognizer(weights, batch_size=2)
    inputs = [three_faces[0], COFFEE, ASTRONAUT, PHOTOS / "missing.png", three_faces[0]]
    results = rec.predict_many(inputs)
    assert [len(r.predictions) for r in results] == [3, 0, 1, 0, 3]
    assert [r.ok for r in results] == [True, True, True, False, True]
    assert "no such file" in results[3].error
    single = ExpressionRecognizer(weights)(three_faces[0])
    for got, expected in zip(results[0].predictions, single, strict=True):
        assert got.box == expected.box
        assert probs_close(got.probabilities, expected.probabilities, 1e-6)


@pytest.fixture(scope="module")
def bad_inputs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("bad")
    files = {"missing": folder / "missing.png"}
    files["text"] = folder / "notes.png"
    files["text"].write_text("this is not an image\n")
    files["zero"] = folder / "zero.jpg"
    files["zero"].write_bytes(b"")
    files["one_pixel"] = folder / "one.png"
    Image.new("RGB", (1, 1), (10, 20, 30)).save(files["one_pixel"])
    face = astronaut_face(160)
    deep = (face.mean(axis=2) * 257).astype(np.uint16)
    files["16bit"] = folder / "deep.png"
    Image.fromarray(deep).save(files["16bit"])
    assert Image.open(files["16bit"]).mode.startswith("I;16")
    files["cmyk"] = folder / "cmyk.jpg"
    Image.fromarray(face).convert("CMYK").save(files["cmyk"], quality=95)
    files["rgba"] = folder / "rgba.png"
    rgba = np.dstack([face, np.full(face.shape[:2], 255, np.uint8)])
    rgba[:10, :10, 3] = 0
    Image.fromarray(rgba, "RGBA").save(files["rgba"])
    files["palette"] = folder / "palette.png"
    Image.fromarray(face).convert("P").save(files["palette"])
    return files


def test_bad_inputs_give_clear_results(
    rec: ExpressionRecognizer, weights: Path, bad_inputs: dict[str, Path]
) -> None:
    for name, reason in [("missing", "no such file"), ("text", "cannot read"), ("zero", "empty")]:
        with pytest.raises(ImageError, match=reason) as info:
            rec(bad_inputs[name])
        assert str(bad_inputs[name]) in str(info.value)
    assert rec(bad_inputs["one_pixel"]) == []  # no face in one pixel, and no crash
    whole_images = ExpressionRecognizer(weights, detect=False)
    with pytest.raises(ValueError, match="a 1x1 image is too small to be a face"):
        whole_images(bad_inputs["one_pixel"])  # used to be labelled from one upscaled pixel
    (result,) = whole_images.predict_many([bad_inputs["one_pixel"]])
    assert not result.ok and "too small" in str(result.error)
    for name in ("16bit", "cmyk", "rgba", "palette"):
        assert len(rec(bad_inputs[name])) == 1, name  # the astronaut's face, found again
    results = rec.predict_many(list(bad_inputs.values()))
    errors = {name for name, r in zip(bad_inputs, results, strict=True) if not r.ok}
    assert errors == {"missing", "text", "zero"}


def test_reader_applies_exif_and_gray_decoding_agrees(bad_inputs: dict[str, Path]) -> None:
    """Training decodes files straight to gray; inference crops RGB and converts: same pixels."""
    exif = bad_inputs["rgba"].parent / "exif.jpg"
    exif_data = Image.Exif()
    exif_data[0x0112] = 6  # orientation: rotate 90 degrees on display
    Image.fromarray(astronaut_face(40)[:, :30]).save(exif, exif=exif_data)
    for name in ("one_pixel", "16bit", "cmyk", "rgba", "palette"):
        rgb = read_image(bad_inputs[name])
        assert rgb.dtype == np.uint8 and rgb.ndim == 3 and rgb.shape[2] == 3, name
        gray = read_image(bad_inputs[name], grayscale=True)
        assert (np.asarray(Image.fromarray(rgb).convert("L")) == gray).all(), name
    assert read_image(exif).shape == (30, 40, 3)  # shown upright: 40 wide after rotation


def test_prediction_from_probabilities() -> None:
    face = Face(1, 2, 11, 22, score=3.0)
    prediction = Prediction.from_probabilities(face, np.array([0.1, 0.7, 0.2]), ["a", "b", "c"])
    assert prediction.box == (1, 2, 11, 22) and prediction.detector_score == 3.0
    assert prediction.label == "b" and prediction.confidence == pytest.approx(0.7)
    assert prediction.probabilities == pytest.approx({"a": 0.1, "b": 0.7, "c": 0.2})
    with pytest.raises(ValueError, match="2 probabilities for 3 classes"):
        Prediction.from_probabilities(face, np.array([0.5, 0.5]), ["a", "b", "c"])


# ---------------------------------------------------------------------------- export


def real_inputs(prep: Preprocessing, three_faces: Path) -> torch.Tensor:
    rgb = read_image(three_faces)
    crops = [crop_face(rgb, face) for face in HaarDetector().detect(rgb)]
    crops += [read_image(p) for p in fer_faces()]
    return torch.from_numpy(numpy_eval_transform(stack_crops(crops, prep), prep))


@pytest.mark.parametrize("image_size", [48, 96])  # 96: exercises the backbone's resize
def test_onnx_export_matches_pytorch(
    tmp_path: Path, three_faces: tuple[Path, list[tuple[int, int]]], image_size: int
) -> None:
    import onnxruntime as ort

    prep = {**GRAY_48, "image_size": image_size, "load_size": image_size}
    path = save_tiny(tmp_path / "m.safetensors", prep, image_size=image_size)
    base, card = load_model(path)
    report = export_onnx(base, card, tmp_path / "m.onnx")
    assert report.max_abs_diff <= 1e-4
    session = ort.InferenceSession(str(report.path), providers=["CPUExecutionProvider"])
    props = session.get_modelmeta().custom_metadata_map
    assert json.loads(props["classes"]) == CLASSES
    assert json.loads(props["preprocessing"]) == prep
    assert card_from_embedded(props, "m.onnx") == card.replace(network="base", tensors={})
    generator = torch.Generator().manual_seed(1)
    preprocessing = Preprocessing.from_dict(prep)
    for x in [
        torch.randn(1, 3, image_size, image_size, generator=generator),
        torch.randn(7, 3, image_size, image_size, generator=generator),  # dynamic batch
        real_inputs(preprocessing, three_faces[0]),
    ]:
        with torch.no_grad():
            expected = base(x).numpy()
        got = session.run(["logits"], {"images": x.numpy()})[0]
        assert got.shape == expected.shape and np.abs(got - expected).max() <= 1e-4


def test_onnx_files_exported_before_the_card_still_load() -> None:
    """Files from before the card hold classes, preprocessing and provenance as single keys."""
    props = {
        "format": "qcsfer-export",
        "classes": json.dumps(CLASSES),
        "preprocessing": json.dumps(GRAY_48),
        "provenance": json.dumps({"mode": "qcs", "val_accuracy": 0.8}),
    }
    card = card_from_embedded(props, "old.onnx")
    assert card.classes == tuple(CLASSES) and card.preprocessing.to_dict() == GRAY_48
    assert card.network == "base" and card.mode == "qcs" and card.accuracy() == ("valid", 0.8)
    with pytest.raises(ValueError, match=r"old\.onnx: qcsfer metadata lacks classes"):
        card_from_embedded({"format": "qcsfer-export"}, "old.onnx")


def test_onnx_backend_equals_torch_backend(
    rec: ExpressionRecognizer,
    weights: Path,
    onnx_path: Path,
    three_faces: tuple[Path, list[tuple[int, int]]],
) -> None:
    for onnx_rec in (
        ExpressionRecognizer(onnx_path, threads=1),  # backend auto -> onnx for .onnx
        ExpressionRecognizer(weights, backend="onnx", threads=1),  # exported in memory
    ):
        assert onnx_rec.classes == CLASSES and onnx_rec.preprocessing == rec.preprocessing
        for image in (three_faces[0], ASTRONAUT):
            expected, got = rec(image), onnx_rec(image)
            assert [p.box for p in got] == [p.box for p in expected]
            for a, b in zip(got, expected, strict=True):
                assert a.label == b.label and probs_close(a.probabilities, b.probabilities, 1e-5)
    with pytest.raises(ValueError, match="backend='onnx'"):
        ExpressionRecognizer(onnx_path, backend="torch")
    assert len(onnx_model_bytes(*load_model(weights))) > 1000


def test_onnx_backend_runs_without_torch(onnx_path: Path) -> None:
    """In a fresh interpreter where `import torch` fails."""
    code = (
        "import json, sys\n"
        "sys.modules['torch'] = None\n"
        "from qcsfer.inference import ExpressionRecognizer\n"
        f"rec = ExpressionRecognizer({str(onnx_path)!r}, threads=1, detector='alt2')\n"
        f"print(json.dumps([p.to_dict() for p in rec({str(ASTRONAUT)!r})]))\n"
        "assert sys.modules['torch'] is None\n"
    )
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, check=False
    )
    assert done.returncode == 0, done.stderr
    (face,) = json.loads(done.stdout)
    # Haar on both sides: without torch the default detector (auto) cannot be MTCNN.
    (expected,) = ExpressionRecognizer(onnx_path, threads=1, detector="alt2")(ASTRONAUT)
    assert tuple(face["box"]) == expected.box
    assert probs_close(face["probabilities"], expected.probabilities, 1e-5)


def test_import_qcsfer_stays_light() -> None:
    code = (
        "import sys, qcsfer\n"
        "assert 'torch' not in sys.modules and 'cv2' not in sys.modules, 'heavy import'\n"
        "assert callable(qcsfer.load_model) and qcsfer.ExpressionRecognizer.__name__\n"
        "assert 'ExpressionRecognizer' in dir(qcsfer)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


# ---------------------------------------------------------------------------- CLI


def run_cli(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = main(["-q", *map(str, args)])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_cli_json_and_csv_agree_with_the_api(
    rec: ExpressionRecognizer,
    weights: Path,
    three_faces: tuple[Path, list[tuple[int, int]]],
    capsys: pytest.CaptureFixture[str],
) -> None:
    inputs = [three_faces[0], ASTRONAUT, COFFEE]
    code, out, err = run_cli(["predict", *inputs, "--model", weights, "--format", "json"], capsys)
    assert code == 0, err
    document = json.loads(out)
    assert document["classes"] == CLASSES
    assert document["summary"]["faces"] == 4 and document["summary"]["without_face"] == 1
    for record, image in zip(document["results"], inputs, strict=True):
        assert record["file"] == str(image) and record["error"] is None
        expected = rec(image)
        assert [tuple(f["box"]) for f in record["faces"]] == [p.box for p in expected]
        for face, p in zip(record["faces"], expected, strict=True):
            assert face["label"] == p.label and face["detector_score"] == p.detector_score
            assert probs_close(face["probabilities"], p.probabilities, 1e-6)

    code, out, _ = run_cli(["predict", *inputs, "--model", weights, "--format", "csv"], capsys)
    rows = list(csv.DictReader(io.StringIO(out)))
    assert code == 0 and [r["status"] for r in rows] == ["ok"] * 4 + ["no_face"]
    assert rows[0]["label"] == rec(three_faces[0])[0].label
    assert abs(float(rows[3]["p_happiness"]) - rec(ASTRONAUT)[0].probabilities["happiness"]) < 1e-6


def test_cli_table_reports_and_skips_bad_files(
    weights: Path, bad_inputs: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    inputs = [ASTRONAUT, COFFEE, *bad_inputs.values()]
    code, out, err = run_cli(["predict", *inputs, "--model", weights], capsys)
    assert code == 0
    lines = out.splitlines()
    assert lines[0].split()[:5] == ["file", "box", "label", "conf", "det"]
    assert "no face found" in out and ASTRONAUT.name in out  # long paths are shortened
    for name in ("missing", "text", "zero"):
        assert f"skipped {bad_inputs[name]}" in err
    assert "3 skipped (unreadable or unusable)" in err and "1 without a face" not in err
    code, _, err = run_cli(["predict", bad_inputs["text"], "--model", weights], capsys)
    assert code == 1 and "1 skipped" in err


def test_cli_folders_globs_and_annotated_output(
    weights: Path,
    tmp_path: Path,
    three_faces: tuple[Path, list[tuple[int, int]]],
    capsys: pytest.CaptureFixture[str],
) -> None:
    folder = tmp_path / "in" / "nested"
    folder.mkdir(parents=True)
    Image.open(ASTRONAUT).save(folder / "a.png")
    (folder / "readme.txt").write_text("not an image, not picked up from a folder")
    out_dir = tmp_path / "annotated"
    code, out, err = run_cli(
        [
            "predict",
            tmp_path / "in",
            str(three_faces[0]).replace("three_faces", "three_*"),
            "--model",
            weights,
            "--format",
            "json",
            "--out",
            out_dir,
        ],
        capsys,
    )
    assert code == 0, err
    files = [r["file"] for r in json.loads(out)["results"]]
    assert files == [str(folder / "a.png"), str(three_faces[0])]
    written = sorted(p.name for p in out_dir.iterdir())
    assert written == ["a.png", "three_faces.png"]
    original = read_image(three_faces[0])
    annotated = read_image(out_dir / "three_faces.png")
    assert annotated.shape == original.shape and (annotated != original).any()
    assert (annotated[-20:, -20:] == original[-20:, -20:]).all()  # away from the faces


def test_cli_video_every_second_frame(
    weights: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    video = tmp_path / "clip.avi"
    frame = cv2.imread(str(ASTRONAUT))
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"MJPG"), 10, (512, 512))
    assert writer.isOpened()
    for shift in range(5):
        writer.write(np.roll(frame, 4 * shift, axis=1))
    writer.release()
    out_dir = tmp_path / "out"
    args = [
        "predict",
        video,
        "--model",
        weights,
        "--every",
        2,
        "--format",
        "json",
        "--out",
        out_dir,
    ]
    code, out, err = run_cli(args, capsys)
    assert code == 0, err
    document = json.loads(out)
    results = document["results"]
    assert [r["frame"] for r in results] == [0, 2, 4]
    assert all(len(r["faces"]) == 1 and r["file"] == str(video) for r in results)
    xs = [r["faces"][0]["box"][0] for r in results]
    assert xs[0] < xs[1] < xs[2]  # the face moves right by 8 px every 2 frames
    (annotated,) = list((out_dir / "clip").glob("annotated.*"))  # more: tests/test_video.py
    capture = cv2.VideoCapture(str(annotated))
    assert int(capture.get(cv2.CAP_PROP_FRAME_COUNT)) == 3  # the sampled frames
    capture.release()
    assert document["summary"]["annotated"] == [str(annotated)]
    assert "1 annotated file" in err
    code, out, err = run_cli(["predict", video, "--model", weights], capsys)
    assert code == 0 and out.splitlines()[0].split()[:2] == ["file", "frame"]
    # A box outside the 512 x 512 frames (but inside the 600 x 400 photo) skips the video only.
    args = ["predict", video, COFFEE, "--model", weights, "--box", "520,10,580,60"]
    code, out, err = run_cli([*args, "--format", "json"], capsys)
    assert code == 0, err
    video_result, photo_result = json.loads(out)["results"]
    assert "does not overlap" in video_result["error"] and f"skipped {video}" in err
    assert "truncated" not in err  # stopped by the error, not cut short
    assert photo_result["error"] is None and len(photo_result["faces"]) == 1


def test_cli_export(weights: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run_cli(["export", weights, "--out", tmp_path / "m.onnx"], capsys)
    assert code == 0, err
    assert (tmp_path / "m.onnx").is_file() and "max |logit difference|" in out
    code, _, err = run_cli(["export", tmp_path / "nothing.safetensors"], capsys)
    assert code == 2 and "no weights file" in err
    code, out, err = run_cli(["predict", ASTRONAUT, "--model", tmp_path / "m.onnx"], capsys)
    expected = ExpressionRecognizer(weights)(ASTRONAUT)[0]
    assert code == 0 and f"{expected.label} " in out and "1 face" in err


def test_cli_info_prints_the_card_inside_an_onnx_file(
    weights: Path, onnx_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = run_cli(["info", onnx_path], capsys)
    assert code == 0, err
    assert f"classes ({len(CLASSES)}): {', '.join(CLASSES)}" in out and "inference network" in out
    code, from_weights, err = run_cli(["info", weights], capsys)
    assert code == 0, err
    sizes = [
        [line for line in text.splitlines() if "GMACs/image" in line]
        for text in (out, from_weights)
    ]
    assert len(sizes[0]) == 1 and sizes[0] == sizes[1]  # the same network, counted from its card


def test_progress_goes_to_a_terminal_only() -> None:
    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    terminal, pipe = Terminal(), io.StringIO()
    for stream in (terminal, pipe):
        meter = Progress(3, enabled=True, stream=stream)
        meter.step("a.png")
        meter.step("b.png")
        meter.clear()
    assert "\r[1/3] a.png" in terminal.getvalue() and "\r[2/3] b.png" in terminal.getvalue()
    assert terminal.getvalue().endswith("\r") and pipe.getvalue() == ""


# ---------------------------------------------------------------------------- explain


def test_attention_is_recomputed_exactly(weights: Path) -> None:
    base, _ = load_model(weights)
    x = torch.randn(2, 3, 48, 48)
    attn = base.vit.blocks[-1].attn
    seen: dict[str, torch.Tensor] = {}
    hooks = [
        attn.register_forward_pre_hook(lambda _m, args: seen.__setitem__("in", args[0])),
        attn.register_forward_hook(lambda _m, _a, out: seen.__setitem__("out", out)),
    ]
    with torch.no_grad():
        base(x)
    for hook in hooks:
        hook.remove()
    with torch.no_grad():
        weights_ = attn.attention_weights(seen["in"])
        b, n, c = seen["in"].shape
        v = attn.qkv(seen["in"]).view(b, n, 3, attn.heads, c // attn.heads)[:, :, 2]
        rebuilt = attn.proj((weights_ @ v.transpose(1, 2)).transpose(1, 2).reshape(b, n, c))
    assert (rebuilt - seen["out"]).abs().max() < 1e-5
    logits, maps = class_token_attention(base, x)
    grid = base.config.token_grid
    assert logits.shape == (2, 8) and maps[0].maps.shape == (3, grid, grid)
    for m in maps:
        assert abs(sum(m.shares) + m.to_self - 1) < 1e-5


def test_cli_explain_writes_pngs(
    weights: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = run_cli(["explain", ASTRONAUT, "--model", weights, "--out", tmp_path], capsys)
    assert code == 0, err
    (png,) = list(tmp_path.glob("*.png"))
    assert png.name == "astronaut_face0_attention.png" and str(png) in out
    assert Image.open(png).size[0] > 500
    code, out, _ = run_cli(["explain", COFFEE, "--model", weights, "--out", tmp_path], capsys)
    assert code == 1 and "no face found" in out


def test_explain_names_what_predict_does(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Same image, model and prior: explain prints predict's label and confidence (it once
    applied a plain softmax and ignored --prior). The face is one where the shipped model's two
    operating points name different classes, and neither matches the plain softmax."""
    face = FERPLUS / "FER2013Valid" / "fer0028639.png"
    if not face.is_file():
        pytest.skip(f"FERPlus faces not found under {FERPLUS}")
    shown = set()
    for prior in ("dataset", "balanced"):
        common = ["--model", "ferplus", "--no-detect", "--prior", prior]
        code, out, err = run_cli(["predict", face, *common, "--format", "json"], capsys)
        assert code == 0, err
        (predicted,) = json.loads(out)["results"][0]["faces"]
        code, out, err = run_cli(["explain", face, *common, "--out", tmp_path], capsys)
        assert code == 0, err
        (line,) = out.splitlines()
        said = f"{predicted['label']} {predicted['confidence']:.0%}"
        assert f": {said} at " in line, (prior, line)
        shown.add(said)
    assert len(shown) == 2  # the prior changes what both say


def test_explain_without_matplotlib_says_what_to_install(
    rec: ExpressionRecognizer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)
    with pytest.raises(ImportError, match=r"pip install 'qcsfer\[plots\]'"):
        explain(rec, ASTRONAUT, tmp_path)


def save_tiny_qcs(path: Path) -> tuple[Path, QCSModel]:
    torch.manual_seed(0)
    model = QCSModel(get_config("tiny", num_classes=len(CLASSES)), "qcs").eval()
    saved = save_weights(
        model,
        path,
        network_card(
            model,
            classes=CLASSES,
            preprocessing=GRAY_48,
            provenance={"note": "random weights for tests"},
        ),
    )
    return saved, model


def test_csa_maps_are_the_models_own_attention(tmp_path: Path) -> None:
    _, model = save_tiny_qcs(tmp_path / "qcs.safetensors")
    torch.manual_seed(1)
    images = torch.randn(4, 1, 3, 48, 48)
    maps = csa_maps(model, images)
    grid = model.config.token_grid
    assert maps.shape == (3, 4, grid, grid)
    np.testing.assert_allclose(maps.sum(axis=(2, 3)), 1.0, atol=1e-5)
    # The same maps as the ones CSA uses inside the training forward pass.
    seen = []
    originals = [csa.attention_map for csa in model.csa]
    for csa, original in zip(model.csa, originals, strict=True):
        csa.attention_map = lambda q, pairs, f=original: seen.append(f(q, pairs)) or seen[-1]
    with torch.no_grad():
        model(images)
    inside = torch.stack([s[:, 0] for s in seen]).reshape(3, 4, grid, grid).numpy()
    np.testing.assert_allclose(maps, inside, atol=1e-6)


def test_cli_explain_draws_csa_maps_with_references(
    weights: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    qcs_weights, _ = save_tiny_qcs(tmp_path / "qcs.safetensors")
    references = [ASTRONAUT, ASTRONAUT]
    code, out, err = run_cli(
        [
            "explain",
            ASTRONAUT,
            "--model",
            qcs_weights,
            "--out",
            tmp_path / "out",
            "--reference",
            *references,
        ],
        capsys,
    )
    assert code == 0, err
    assert (tmp_path / "out" / "astronaut_csa.png").is_file() and "CSA maps" in out
    # An inference-only file has no CSA modules: a clear error, not a crash.
    code, _, err = run_cli(
        ["explain", ASTRONAUT, "--model", weights, "--out", tmp_path, "--reference", ASTRONAUT],
        capsys,
    )
    assert code == 2 and "no CSA modules" in err


def test_missing_camera_is_reported_not_a_crash(
    weights: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = run_cli(["predict", "webcam:9", ASTRONAUT, "--model", weights], capsys)
    assert code == 0 and "webcam:9: cannot open the camera" in err
