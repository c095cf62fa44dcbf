"""benchmarks/robustness.py: its conditions, its photo scenes, and short runs end to end."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from qcsfer.pretrained import DEFAULT_WEIGHTS

from .conftest import FERPLUS, REPO


@pytest.fixture()
def bench(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.syspath_prepend(str(REPO / "benchmarks"))
    import conditions
    import photo_path
    import robustness

    return conditions, photo_path, robustness


def _face(seed: int = 0) -> np.ndarray:
    gray = np.random.default_rng(seed).integers(0, 256, (48, 48), dtype=np.uint8)
    return np.repeat(gray[:, :, None], 3, axis=2)


def test_conditions_are_seeded_and_keep_the_face_size(bench) -> None:
    conditions, _, robustness = bench
    face = _face()
    for condition in (conditions.CLEAN, *conditions.CONDITIONS):
        first = condition.apply(face, robustness.condition_rng(0, condition.name))
        again = condition.apply(face, robustness.condition_rng(0, condition.name))
        assert first.shape == face.shape and first.dtype == np.uint8, condition.name
        np.testing.assert_array_equal(first, again, err_msg=condition.name)
        if condition is not conditions.CLEAN:
            assert not np.array_equal(first, face), f"{condition.name} left the face unchanged"


def test_reframe_moves_scales_and_keeps_identity(bench) -> None:
    conditions, _, _ = bench
    face = np.zeros((48, 48, 3), np.uint8)
    face[:, 24:] = 200  # a vertical edge at x = 24
    np.testing.assert_array_equal(conditions.reframe(face), face)
    shifted = conditions.reframe(face, dx=0.25)  # the crop's centre 12 px to the right
    assert shifted[20, 11, 0] < 100 and shifted[20, 13, 0] > 100  # so the edge is at x = 12
    zoomed_out = conditions.reframe(face, scale=2.0)  # twice the content, same edge in the middle
    assert zoomed_out[20, 22, 0] < 100 and zoomed_out[20, 25, 0] > 100
    np.testing.assert_array_equal(conditions.reframe(face, angle=180.0)[:, ::-1], face)


def test_photo_scene_holds_the_face_at_its_true_box(bench) -> None:
    _, photo_path, robustness = bench
    photos = photo_path.load_photos(robustness.ASSETS)
    assert len(photos) == 2 and all(p.ndim == 3 for p in photos)
    ramp = np.add.outer(np.arange(48), 2 * np.arange(48)).astype(np.uint8)  # smooth, not symmetric
    face = np.repeat(ramp[:, :, None], 3, axis=2)
    for seed in range(8):
        scene = photo_path.make_scene(face, np.random.default_rng(seed), photos)
        x0, y0, x1, y1 = scene.truth
        assert 80 <= x1 - x0 <= 300 and x1 - x0 == y1 - y0
        assert scene.image.shape[0] > y1 - y0 and scene.image.shape[1] > x1 - x0
        pasted = Image.fromarray(scene.image[y0:y1, x0:x1]).resize((48, 48), Image.BILINEAR)
        luminance = np.asarray(pasted, np.float64).mean(2)  # a tint scales it, keeps its shape
        assert np.corrcoef(luminance.ravel(), ramp.ravel())[0, 1] > 0.99
    geometry = photo_path.box_geometry(photo_path.Face(10, 20, 110, 120), (10, 20, 110, 120))
    assert geometry == (1.0, 0.0, 0.0, 1.0)


def test_synthetic_run_end_to_end(bench, tmp_path: Path) -> None:
    _, _, robustness = bench
    result = robustness.main(
        [
            "--synthetic",
            "--faces",
            "3",
            "--detectors",
            "alt2",
            "--margins",
            "0,0.02",
            "--out",
            str(tmp_path),
        ]
    )
    saved = json.loads((tmp_path / f"robustness-{DEFAULT_WEIGHTS}-synthetic.json").read_text())
    assert saved["conditions"] == result["conditions"]
    table = (tmp_path / f"robustness-{DEFAULT_WEIGHTS}-synthetic.md").read_text()
    assert "| low resolution |" in table and "Mean accuracy over conditions" in table
    rows = result["conditions"]
    assert set(rows) == {
        "clean",
        "flip",
        "zoom in",
        "zoom out",
        "offset",
        "rotation",
        "blur",
        "jpeg",
        "photometric",
        "noise",
        "low resolution",
        "photo path (alt2), faces found",
    }
    assert rows["clean"]["accuracy"] == 1.0  # the model reads the smiling astronaut as happiness
    perturbed = [row["accuracy"] for name, row in rows.items() if name != "clean"]
    assert result["summary"]["mean_accuracy"] == pytest.approx(np.mean(perturbed))
    assert result["summary"]["worst_accuracy"] == min(perturbed)
    photo = result["photo_path"]["alt2"]
    assert photo["detection_rate"] == 1.0 and photo["false_alarms"] == 0
    assert photo["direct_crop_same_faces"]["accuracy"] == rows["clean"]["accuracy"]
    assert photo["all_faces"]["accuracy"] == photo["detected_faces"]["accuracy"]
    assert set(photo["margins"]) == {"0", "0.02"} and photo["margin"] == 0.02  # alt2's own
    assert photo["margins"]["0.02"] == photo["detected_faces"]  # the sweep crops as predict does
    assert 0.8 < photo["framing"]["true_side_over_box_side"] < 1.25


def test_ferplus_run_reads_valid_faces(bench, tmp_path: Path) -> None:
    _, _, robustness = bench
    if not (FERPLUS / "FER2013Valid" / "label.csv").is_file():
        pytest.skip(f"FERPlus not found at {FERPLUS}")
    result = robustness.main(
        ["--faces", "40", "--detectors", "", "--ferplus", str(FERPLUS), "--out", str(tmp_path)]
    )
    assert result["faces"] == 40 and result["data"] == "FERPlus Valid"
    assert result["conditions"]["clean"]["accuracy"] > 0.6  # 85-87% on 500 Valid faces
    assert result["photo_path"] == {} and (tmp_path / f"robustness-{DEFAULT_WEIGHTS}.md").is_file()
