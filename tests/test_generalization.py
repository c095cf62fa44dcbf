"""benchmarks/generalization.py on a tiny generated four-source tree, with a model whose
predictions are known: its logits are constant (happiness first as trained; surprise first once
the balanced point divides the prior out), so every number of the suite can be written down."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from qcsfer.decision import DecisionRule, OperatingPoint
from qcsfer.inference.faces import Face
from qcsfer.models.base import BaseNetwork
from qcsfer.models.configs import get_config
from qcsfer.models.weights import network_card, save_weights

from .conftest import REPO

CLASSES = ["neutral", "happiness", "surprise", "sadness", "anger", "disgust", "fear", "contempt"]
BIAS = [0.0, 2.0, 1.0, 0.0, 0.0, 0.0, 0.0, 0.0]  # happiness, then surprise
PRIOR = (0.3, 0.4, 0.05, 0.05, 0.05, 0.05, 0.05, 0.05)  # -log: surprise +3.0, happiness +0.9
GRAY_48 = {"image_size": 48, "load_size": 48, "grayscale": True}


@pytest.fixture()
def bench(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.syspath_prepend(str(REPO / "benchmarks"))
    import generalization
    import suite_scores

    return generalization, suite_scores


def constant_model(path: Path, provenance: dict | None = None) -> Path:
    """Weights whose logits are BIAS whatever the face (`provenance`: the card's, if given)."""
    torch.manual_seed(0)
    model = BaseNetwork(get_config("tiny", num_classes=len(CLASSES)))
    with torch.no_grad():
        model.vit.head.weight.zero_()
        model.vit.head.bias.copy_(torch.tensor(BIAS))
    rule = DecisionRule(PRIOR, {"balanced": OperatingPoint(1.0, 1.5)}, default="balanced")
    return save_weights(
        model,
        path,
        network_card(
            model,
            classes=CLASSES,
            preprocessing={**GRAY_48, "mean": [0.5] * 3, "std": [0.25] * 3},
            provenance=provenance or {"note": "constant logits for tests"},
            decision=rule,
        ),
    )


def _images(folder: Path, name: str, count: int, side: int, dark: int = 0) -> None:
    """`count` noisy images (the first `dark` of them black: no face for the stub detector)."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(len(name) + count)
    for i in range(count):
        pixels = rng.integers(60, 250, (side, side, 3), dtype=np.uint8) * (i >= dark)
        Image.fromarray(pixels.astype(np.uint8)).save(folder / f"{name}_{i:03d}.jpg")


def write_tree(root: Path) -> Path:
    valid = root / "ferplus" / "FER2013Valid"
    valid.mkdir(parents=True)
    rows = [(1, 3), (2, 2), (0, 4), (8, 1)]  # (vote column, faces): happiness, surprise, ...
    with (valid / "label.csv").open("w", newline="") as f:
        writer = csv.writer(f)
        for column, count in rows:
            for i in range(count):
                name = f"fer{column}{i}.png"
                Image.new("L", (48, 48), 40 * i + 30).save(valid / name)
                votes = [0] * 10
                votes[column] = 10  # column 8 is "unknown": the majority rule drops it
                writer.writerow([name, "(0, 0, 48, 48)", *votes])
    for name, count in {"happiness": 80, "surprise": 60, "anger": 60}.items():
        _images(root / "affectnet-web" / "train" / name, name, count, 48)
    for name, (count, dark) in {
        "happiness": (4, 1),
        "anger": (4, 0),
        "surprise": (3, 0),
        "neutral": (2, 0),
    }.items():
        _images(root / "tcce" / "dev" / name, name, count, 192, dark)
    for name, count in {"happiness": 5, "neutral": 3, "contempt": 1, "calm": 1}.items():
        _images(root / "lfw-imfdb" / "dev" / name, name, count, 112)
    return root


class StubDetector:
    """A large and a small face in every photo that is not black; records what it was shown."""

    name = "stub"
    margin = 0.1

    def __init__(self) -> None:
        self.shapes: list[tuple[int, ...]] = []

    def detect(self, image: np.ndarray) -> list[Face]:
        self.shapes.append(image.shape)
        if image.max() == 0:
            return []
        return [Face(10, 10, 40, 40, 0.9), Face(48, 60, 144, 156, 0.99)]


def test_score_counts_missing_faces_wrong_and_small_classes_out(bench) -> None:
    _, suite_scores = bench
    labels = np.array([0, 0, 0, 0, 1, 1, 1, 2, 2])
    predicted = np.array([0, 0, 1, -1, 1, 1, 0, 2, 0])
    result = suite_scores.score(labels, predicted, ["a", "b", "c", "d"], min_support=3)
    assert result["accuracy"] == pytest.approx(5 / 9)
    assert result["balanced_over"] == ["a", "b"]
    assert result["balanced_accuracy"] == pytest.approx((2 / 4 + 2 / 3) / 2)
    assert result["per_class"]["c"] == {"recall": 0.5, "support": 2}
    assert "d" not in result["per_class"] and result["no_prediction"] == 1


def test_suite_on_a_synthetic_tree(bench, tmp_path: Path) -> None:
    generalization, _ = bench
    datasets = write_tree(tmp_path / "datasets")
    weights = constant_model(tmp_path / "constant.safetensors")
    detector = StubDetector()
    out = tmp_path / "out"
    argv = [str(weights), "--datasets", str(datasets), "--min-support", "3", "--out", str(out)]
    result = generalization.main(argv, detector=detector)

    assert detector.shapes and set(detector.shapes) == {(192, 192, 3)}  # the whole photos
    sources = result["sources"]
    assert list(sources) == [
        "ferplus-valid",
        "affectnet-web-dev",
        "tcce-dev-detector",
        "tcce-dev-centre",
        "lfw-imfdb-dev",
    ]
    expected = {  # (accuracy, balanced accuracy) at dataset (happiness) and balanced (surprise)
        "ferplus-valid": ((3 / 9, 1 / 2), (2 / 9, 0.0)),  # surprise has 2 faces: not counted
        "affectnet-web-dev": ((4 / 10, 1 / 3), (3 / 10, 1 / 3)),  # the 5% carve: 4, 3, 3
        "tcce-dev-detector": ((3 / 13, 0.75 / 3), (3 / 13, 1 / 3)),  # one happy face missed
        "tcce-dev-centre": ((4 / 13, 1 / 3), (3 / 13, 1 / 3)),
        "lfw-imfdb-dev": ((5 / 9, 1 / 2), (0.0, 0.0)),  # "calm" is no model class
    }
    for key, points in expected.items():
        for point, (accuracy, balanced) in zip(("dataset", "balanced"), points, strict=True):
            got = sources[key]["points"][point]
            assert got["accuracy"] == pytest.approx(accuracy), (key, point)
            assert got["balanced_accuracy"] == pytest.approx(balanced), (key, point)
    detected = sources["tcce-dev-detector"]
    assert detected["points"]["dataset"]["per_class"]["happiness"] == {"recall": 0.75, "support": 4}
    assert detected["notes"]["no face found (counted wrong)"] == 1
    assert detected["notes"]["several faces"] == 12
    assert sources["lfw-imfdb-dev"]["notes"]["class not in the model"] == 1
    assert result["suite"]["dataset"] == pytest.approx((1 / 2 + 1 / 3 + 0.25 + 1 / 2) / 4)
    assert result["suite"]["balanced"] == pytest.approx((0 + 1 / 3 + 1 / 3 + 0) / 4)
    # The largest face, cropped with the detector's own margin as predict crops it.
    assert result["tcce_detector_crop"]["crop_side_over_image_side"] == pytest.approx(0.6)
    assert result["operating_points"]["balanced"] == {"prior_strength": 1.0, "temperature": 1.5}

    saved = json.loads((out / "generalization-constant.json").read_text())
    assert saved["suite"] == result["suite"]
    table = (out / "generalization-constant.md").read_text()
    assert "| **suite score** (mean balanced, 4 sources) |" in table
    assert "| tcce dev, centre crop 0.7 (comparison) | 13 |" in table


def test_missing_source_is_one_message(bench, tmp_path: Path) -> None:
    generalization, _ = bench
    datasets = write_tree(tmp_path / "datasets")
    weights = constant_model(tmp_path / "constant.safetensors")
    shutil.rmtree(datasets / "tcce")
    with pytest.raises(SystemExit, match="tcce"):
        generalization.main([str(weights), "--datasets", str(datasets), "--out", str(tmp_path)])
