"""Named shipped models (issue 26): the registry and what `default` is, `qcsfer info`'s list,
half-precision files, and the card tools/ship_model.py writes for a multi-source model."""

from __future__ import annotations

import json
import runpy
from pathlib import Path
from typing import Any

import pytest
import torch

from qcsfer import pretrained
from qcsfer.card import read_card
from qcsfer.cli import main
from qcsfer.decision import DecisionRule, OperatingPoint
from qcsfer.errors import NotFoundError, UsageError
from qcsfer.models import QCSModel, get_config
from qcsfer.models.backbone_file import CARD_KEY
from qcsfer.models.converted_file import write_converted
from qcsfer.models.weights import file_sha256, load_weights, network_card, save_weights
from qcsfer.preprocessing import Preprocessing

from .conftest import REPO

CLASSES = ("a", "b", "c")
FERPLUS_FILES = ("ferplus-qcs-small.safetensors", "ferplus-qcs-small.json")


def tiny_model(path: Path, half: bool = False, **card: Any) -> Path:
    """A tiny QCS training graph saved at `path` with its card (half: float16 tensors)."""
    torch.manual_seed(0)
    model = QCSModel(get_config("tiny", num_classes=len(CLASSES)), "qcs").eval()
    prep = Preprocessing(image_size=48, load_size=48, grayscale=True)
    built = network_card(model, classes=CLASSES, preprocessing=prep, **card)
    return save_weights(model.to(torch.float16) if half else model, path, built)


@pytest.fixture
def weights_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A weights folder holding the real ferplus model (linked) and nothing else."""
    folder = tmp_path / "weights"
    folder.mkdir()
    for name in FERPLUS_FILES:
        (folder / name).symlink_to(pretrained.WEIGHTS_DIR / name)
    monkeypatch.setattr(pretrained, "WEIGHTS_DIR", folder)
    return folder


def test_default_is_ferplus_until_general_is_installed(weights_dir: Path) -> None:
    assert pretrained.default_model().name == "ferplus"
    assert pretrained.resolve_weights("default") == weights_dir / FERPLUS_FILES[0]
    assert pretrained.resolve_weights(None) == pretrained.resolve_weights("ferplus")
    with pytest.raises(NotFoundError, match=r"'general' is not installed.*installed: ferplus"):
        pretrained.resolve_weights("general")

    general = tiny_model(weights_dir / "general-qcs-small.safetensors")
    assert pretrained.default_model().name == "general"
    assert pretrained.resolve_weights("default") == general
    assert pretrained.resolve_weights("ferplus") == weights_dir / FERPLUS_FILES[0]
    assert pretrained.DEFAULT_WEIGHTS == "general-qcs-small"  # what benchmarks name results
    assert pretrained.load_card().classes == CLASSES


def test_unknown_names_list_the_shipped_models(tmp_path: Path) -> None:
    with pytest.raises(NotFoundError, match=r"generl \(nor a shipped model: general, ferplus"):
        pretrained.resolve_weights("generl")
    with pytest.raises(NotFoundError, match="no shipped model named 'x'; shipped models: general"):
        pretrained.shipped("x")
    missing = tmp_path / "nothing.safetensors"  # a path: no list of names
    with pytest.raises(NotFoundError, match=r"^no weights file at .*nothing.safetensors$"):
        pretrained.resolve_weights(missing)


def test_a_shipped_name_wins_over_a_folder_of_that_name(
    weights_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "ferplus").mkdir()  # a dataset folder where the command runs
    monkeypatch.chdir(tmp_path)
    assert pretrained.resolve_weights("ferplus") == weights_dir / FERPLUS_FILES[0]


def test_info_lists_the_shipped_models(weights_dir: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["info"]) == 0
    out = capsys.readouterr().out
    assert "shipped models ('default' is ferplus)" in out
    assert "general: general-qcs-small.safetensors, not installed" in out
    assert "ferplus (default): ferplus-qcs-small.safetensors, 16.6 MB, 48 px grey" in out
    assert "for: faces from anywhere" in out and "measured: valid_flip accuracy 88" in out

    metrics = {"valid_flip": {"accuracy": 0.9}, "suite_balanced": {"suite_score": 0.7}}
    tiny_model(weights_dir / "general-qcs-small.safetensors", metrics=metrics)
    assert main(["info"]) == 0
    out = capsys.readouterr().out
    assert "('default' is general)" in out and "general (default): general-qcs-small" in out
    assert "measured: valid_flip accuracy 90.00%, suite score (balanced) 70.0%" in out
    assert main(["info", "general"]) == 0 and "classes (3): a, b, c" in capsys.readouterr().out


def test_half_precision_files_load_as_float32(tmp_path: Path) -> None:
    full = tiny_model(tmp_path / "full.safetensors")
    half = tiny_model(tmp_path / "half.safetensors", half=True)
    assert half.stat().st_size < 0.6 * full.stat().st_size
    (a, _), (b, _) = load_weights(full, base_only=True), load_weights(half, base_only=True)
    assert {p.dtype for p in b.parameters()} == {torch.float32}
    images = torch.rand(2, 3, 48, 48)
    with torch.no_grad():
        assert torch.allclose(a(images), b(images), atol=0.02)


@pytest.fixture(scope="module")
def ship() -> dict[str, Any]:
    return runpy.run_path(str(REPO / "tools" / "ship_model.py"))


def test_sources_carry_the_licence_notes_of_their_readmes(tmp_path: Path, ship: dict) -> None:
    (tmp_path / "main").mkdir()
    (tmp_path / "main" / "README.md").write_text(
        "# Main\n\n- Images: faces.\n- Labels: votes. Labels are MIT-licensed; the images are\n"
        "  for research use.\n"
    )
    (tmp_path / "posed").mkdir()
    (tmp_path / "posed" / "README.md").write_text(
        "# Posed\n\n- Licence: academic use only;\n  never redistribute.\n- Other: x.\n"
    )
    data = {
        "format": "ferplus",
        "root": str(tmp_path / "main"),
        "train_split": "train",
        "val_split": "valid",
        "options": {"label_mode": "probability"},
        "sources": [
            {
                "name": "posed",
                "format": "folder",
                "root": str(tmp_path / "posed"),
                "detector": "mtcnn",
                "framing": 0.7,
            },
            {"format": "folder", "root": str(tmp_path / "bare"), "exclude": ["ffhq_*"]},
        ],
    }
    main_source, posed, bare = ship["training_sources"](data)
    assert main_source["name"] == "main" and "model selection on 'valid'" in main_source["used"]
    assert main_source["licence"] == "Labels are MIT-licensed; the images are for research use."
    assert posed["licence"] == "academic use only; never redistribute."
    assert posed["used"] == "'train', detector mtcnn, framing 0.7"
    assert bare["name"] == "folder" and bare["licence"].startswith("unknown: no README")


def test_the_backbone_is_found_in_an_earlier_stage(tmp_path: Path, ship: dict) -> None:
    backbone = tmp_path / "faceres.safetensors"
    card = {"network": "faceres", "source_package": "pkg", "licence": "research use only"}
    write_converted(backbone, {"w": torch.zeros(2)}, CARD_KEY, card)
    earlier = {"config": {"init": {"backbone": str(backbone)}}}
    found = ship["backbone_provenance"]({"init": {"weights": "runs/x"}}, earlier)
    assert found == {"file": str(backbone), **card}
    gone = ship["backbone_provenance"]({"init": {"backbone": str(tmp_path / "gone")}}, None)
    assert gone["card"].startswith("not readable when shipped")
    assert ship["backbone_provenance"]({"init": {}}, None) is None


def suite_document(strength: float) -> dict[str, Any]:
    """A generalization-*.json as benchmarks/generalization.py writes it (the parts read)."""
    points = {"dataset": {"balanced_accuracy": 0.5}, "balanced": {"balanced_accuracy": 0.6}}
    return {
        "classes": list(CLASSES),
        "operating_points": {
            "dataset": {"prior_strength": 0.0, "temperature": 1.0},
            "balanced": {"prior_strength": strength, "temperature": 1.2},
        },
        "suite_sources": ["one", "two"],
        "suite": {"dataset": 0.55, "balanced": 0.65},
        "sources": {"one": {"points": points}, "two": {"points": points}},
        "command": "python benchmarks/generalization.py general",
        "date": "2026-12-05",
    }


def test_suite_results_are_added_to_the_card_alone(tmp_path: Path, ship: dict) -> None:
    rule = DecisionRule((0.5, 0.3, 0.2), {"balanced": OperatingPoint(1.0, 1.1)}, "balanced")
    provenance = {
        "sources": [{"name": "tcce", "used": "'train'", "licence": "research use only"}],
        "backbone": {
            "network": "faceres",
            "source_package": "pkg",
            "licence": "VGGFace2 only",
        },
    }
    weights = tiny_model(tmp_path / "m.safetensors", decision=rule, provenance=provenance)
    sha = file_sha256(weights)
    suite = tmp_path / "generalization-m.json"
    suite.write_text(json.dumps(suite_document(0.5)))
    with pytest.raises(UsageError, match=r"balanced prior strength 0\.5, this card's is 1\.0"):
        ship["main"](["--out", str(weights), "--suite", str(suite)])

    suite.write_text(json.dumps(suite_document(1.0)))
    ship["main"](["--out", str(weights), "--suite", str(suite)])
    card = read_card(weights)
    assert file_sha256(weights) == sha  # the tensors are untouched
    assert card.metrics["suite_balanced"] == {
        "suite_score": 0.65,
        "one balanced_accuracy": 0.6,
        "two balanced_accuracy": 0.6,
    }
    assert card.provenance["generalization_suite"]["score"] == {"dataset": 0.55, "balanced": 0.65}
    summary = card.summary()
    assert "metrics suite_balanced: suite_score 0.65, one balanced accuracy 60.00%" in summary
    assert "source tcce: 'train'; licence: research use only" in summary
    assert "backbone: faceres from pkg; licence: VGGFace2 only" in summary


def test_ship_model_needs_a_destination(ship: dict) -> None:
    with pytest.raises(SystemExit):
        ship["parse_args"](["runs/x"])  # neither --name nor --out
    assert ship["parse_args"](["runs/x", "--name", "general"]).name == "general"


def test_the_wheel_takes_every_shipped_model_as_package_data() -> None:
    """Both files of each registry entry match pyproject's package-data patterns (the slow
    wheel test in test_recipes.py builds the wheel itself)."""
    import fnmatch

    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))
    patterns = pyproject["tool"]["setuptools"]["package-data"]["qcsfer"]
    for model in pretrained.SHIPPED:
        for suffix in (".safetensors", ".json"):
            name = f"weights/{model.stem}{suffix}"
            assert any(fnmatch.fnmatch(name, p) for p in patterns), name
