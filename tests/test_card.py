"""The model card: its JSON schema round trip, both old provenance layouts, base-only loading."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from qcsfer.card import FORMAT_VERSION, ModelCard, read_card, write_card
from qcsfer.config import TrainConfig
from qcsfer.decision import DecisionRule, OperatingPoint
from qcsfer.engine.epoch_record import EpochRecord
from qcsfer.engine.run_reports import export_best
from qcsfer.errors import WeightsError
from qcsfer.models import BaseNetwork, QCSModel, get_config
from qcsfer.models.weights import load_weights, model_config, network_card, save_weights
from qcsfer.preprocessing import Preprocessing
from qcsfer.pretrained import WEIGHTS_DIR

CLASSES = ("a", "b", "c")
PREP = Preprocessing(image_size=48, load_size=48, grayscale=True)


def make_card(**changes: object) -> ModelCard:
    config = get_config("tiny", num_classes=3)
    card = ModelCard("training", config.to_dict(), CLASSES, PREP, mode="qcs")
    return card.replace(**changes)


def test_card_round_trips_through_json() -> None:
    card = make_card(
        decision=DecisionRule((0.5, 0.3, 0.2), {"balanced": OperatingPoint(1.0, 1.3)}, "balanced"),
        metrics={"valid_flip": {"accuracy": 0.9, "images": 10}},
        provenance={"seed": 0, "config": {"epochs": 2}},
        tensors={"file": "x.safetensors", "sha256": "0" * 64},
    )
    data = json.loads(json.dumps(card.to_dict()))
    assert data["format_version"] == FORMAT_VERSION
    assert data["decision"]["operating_points"]["balanced"]["temperature"] == 1.3
    assert ModelCard.from_dict(data) == card
    assert model_config(card) == get_config("tiny", num_classes=3)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"decision": {"training_prior": [0.5, 0.5]}}, "a training prior of 2 for 3 classes"),
        ({"decision": {"training_prior": [0.9, 0.3, -0.2]}}, "invalid decision rule"),
        ({"decision": {"default": "uniform"}}, "invalid decision rule"),
        ({"decision": 2.0}, "decision must be a mapping"),
        ({"metrics": {"valid": {"accuracy": "high"}}}, "metrics.valid must map metric names"),
        ({"format_version": FORMAT_VERSION + 1}, "newer than this qcsfer"),
        ({"network": "whole"}, "unknown network"),
        ({"mode": "dcs2"}, "unknown training mode"),
    ],
)
def test_card_refuses_invalid_fields_naming_the_file(change: dict, message: str) -> None:
    data = {**make_card().to_dict(), **change}
    with pytest.raises(WeightsError, match=message) as info:
        ModelCard.from_dict(data, "somewhere.json")
    assert str(info.value).startswith("somewhere.json: ")


def test_version_1_cards_read_metrics_from_either_provenance_layout() -> None:
    old = {**make_card().to_dict(), "format_version": 1}
    for key in ("decision", "metrics"):
        del old[key]
    trainer = {"val_accuracy": 0.7, "val_balanced_accuracy": 0.6, "config": {"eval_flip": True}}
    card = ModelCard.from_dict({**old, "provenance": trainer})
    assert card.metrics == {"valid_flip": {"accuracy": 0.7, "balanced_accuracy": 0.6}}
    shipped = {"validation": {"plain": {"accuracy": 0.8}, "flip": {"accuracy": 0.85}}}
    card = ModelCard.from_dict({**old, "provenance": shipped})
    assert card.accuracy() == ("valid_flip", 0.85) and card.metrics["valid"] == {"accuracy": 0.8}
    assert card.prior is None and card.decision == DecisionRule()
    assert ModelCard.from_dict(old).metrics == {}


def test_the_shipped_card_reads_unchanged() -> None:
    card = read_card(WEIGHTS_DIR / "ferplus-qcs-small.json")
    assert card.network == "training" and card.mode == "qcs" and len(card.classes) == 8
    assert card.accuracy() == ("valid_flip", pytest.approx(0.8809, abs=1e-4))
    assert "metrics valid_flip: accuracy 88.09%" in card.summary()


def _training_file(path: Path) -> Path:
    torch.manual_seed(0)
    model = QCSModel(get_config("tiny", num_classes=3), "qcs").eval()
    return save_weights(
        model,
        path,
        network_card(
            model,
            classes=CLASSES,
            preprocessing=PREP.to_dict(),
            metrics={"valid": {"accuracy": 0.5}},
            decision=DecisionRule((0.2, 0.3, 0.5)),
        ),
    )


def test_base_only_load_reads_only_the_base_tensors(tmp_path: Path) -> None:
    path = _training_file(tmp_path / "best.safetensors")
    full, card = load_weights(path)
    assert card.prior == (0.2, 0.3, 0.5) and card.metrics == {"valid": {"accuracy": 0.5}}
    with safe_open(path, framework="pt") as f:
        header = f.metadata()
    base_only = {k: v for k, v in load_file(path).items() if k.startswith("base.")}
    save_file(base_only, path, metadata=header)  # same id, training tensors gone
    base, _ = load_weights(path, base_only=True)
    assert isinstance(base, BaseNetwork)
    x = torch.randn(2, 3, 48, 48)
    with torch.no_grad():
        assert torch.equal(base(x), full.base(x))
    with pytest.raises(WeightsError, match="sha256 mismatch"):
        load_weights(path)  # the whole graph is checked by hash
    save_file(base_only, path, metadata={**header, "id": "another"})
    with pytest.raises(WeightsError, match="id mismatch"):
        load_weights(path, base_only=True)


def test_write_card_replaces_only_the_card(tmp_path: Path) -> None:
    path = _training_file(tmp_path / "best.safetensors")
    tensors = path.read_bytes()
    rule = DecisionRule((0.2, 0.3, 0.5), {"dataset": OperatingPoint(0.0, 1.7)})
    write_card(read_card(path).replace(decision=rule), path)
    assert path.read_bytes() == tensors
    _, card = load_weights(path)
    assert card.decision == rule


def _edit_card(path: Path, edit) -> None:
    """Change the card's JSON as a text editor would (indentation changed too)."""
    card_path = path.with_suffix(".json")
    data = json.loads(card_path.read_text())
    edit(data)
    card_path.write_text(json.dumps(data, indent=4))


@pytest.mark.parametrize(
    ("edit", "fields"),
    [
        (lambda d: d["classes"].reverse(), "classes"),
        (lambda d: d["preprocessing"].update(grayscale=False), "preprocessing"),
        (lambda d: d["decision"].update(training_prior=[0.5, 0.3, 0.2]), "decision"),
        (lambda d: d.update(mode="dcs", network="training"), "mode"),
        (lambda d: (d["classes"].sort(reverse=True), d["model"].update(heads=1)), "model, classes"),
    ],
)
def test_a_hand_edited_meaning_is_refused(tmp_path: Path, edit, fields: str) -> None:
    path = _training_file(tmp_path / "best.safetensors")
    _edit_card(path, edit)
    with pytest.raises(WeightsError, match=f": {fields} changed after this card was written"):
        load_weights(path)
    with pytest.raises(WeightsError, match="meaning_sha256 does not match"):
        read_card(path)


def test_edits_that_change_no_meaning_are_accepted(tmp_path: Path) -> None:
    path = _training_file(tmp_path / "best.safetensors")
    assert set(json.loads(path.with_suffix(".json").read_text())["meaning_sha256"]) == {
        "network",
        "mode",
        "model",
        "classes",
        "preprocessing",
        "decision",
    }
    _edit_card(path, lambda d: d["provenance"].update(note="re-indented, a note added"))
    _, card = load_weights(path)
    assert card.classes == CLASSES and card.provenance["note"].startswith("re-indented")
    _edit_card(path, lambda d: (d.pop("meaning_sha256"), d["classes"].reverse()))
    assert load_weights(path)[1].classes == CLASSES[::-1]  # a card from before the digests


def test_the_shipped_card_is_stamped_and_refused_reversed() -> None:
    data = json.loads((WEIGHTS_DIR / "ferplus-qcs-small.json").read_text())
    assert ModelCard.from_dict(data).classes[:2] == ("neutral", "happiness")
    data["classes"].reverse()  # the edit the probe made: every label moved to another face
    with pytest.raises(WeightsError, match="classes changed after this card was written"):
        ModelCard.from_dict(data)


def test_an_edited_card_inside_an_onnx_file_is_refused() -> None:
    from qcsfer.inference.contract import card_from_embedded, embedded_metadata

    props = embedded_metadata(make_card())
    assert card_from_embedded(props, "m.onnx").classes == CLASSES
    card = json.loads(props["card"])
    card["classes"] = ["c", "b", "a"]
    with pytest.raises(WeightsError, match=r"m\.onnx: classes changed"):
        card_from_embedded({**props, "card": json.dumps(card)}, "m.onnx")


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("model.onnx", "model.onnx: an exported ONNX model; this needs the PyTorch weights"),
        ("photo.jpg", "photo.jpg: not a qcsfer weights file"),
        ("checkpoint.pt", "checkpoint.pt: not a qcsfer weights file"),
        ("model.safetensors", "model.json: metadata sidecar missing"),
    ],
)
def test_a_file_without_a_card_is_named_for_what_it_is(
    name: str, message: str, tmp_path: Path
) -> None:
    (tmp_path / name).write_bytes(b"something")
    with pytest.raises(WeightsError, match=message):
        read_card(tmp_path / name)


# ---------------------------------------------------------------------------- writing a card


def test_save_weights_writes_the_card_it_is_given_only_for_its_model(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = QCSModel(get_config("tiny", num_classes=3), "qcs").eval()
    card = network_card(
        model, classes=CLASSES, preprocessing=PREP, metrics={"valid": {"accuracy": 0.5}}
    )
    assert (card.network, card.mode) == ("training", "qcs")
    path = save_weights(model, tmp_path / "w.safetensors", card)
    assert read_card(path).metrics == {"valid": {"accuracy": 0.5}}
    assert read_card(path).replace(tensors={}) == card
    refused = [
        (model.base, card, "a card for a 'training' network, given a 'base' one"),
        (QCSModel(get_config("tiny", num_classes=3), "dcs"), card, "the model is 'dcs'"),
        (model, card.replace(model=get_config("small", num_classes=3).to_dict()), "not this"),
    ]
    for network, wrong, message in refused:
        with pytest.raises(WeightsError, match=message):
            save_weights(network, tmp_path / "x.safetensors", wrong)
    assert not list(tmp_path.glob("x.*"))  # refused before anything is written
    with pytest.raises(WeightsError, match="mode 'dcs' for a qcs training graph"):
        network_card(model, classes=CLASSES, preprocessing=PREP, mode="dcs")


def test_the_trainer_writes_metrics_and_mode_as_card_fields(tmp_path: Path) -> None:
    """Not the version-1 layout (`val_accuracy`, `mode` in the provenance): read-only now."""
    model = QCSModel(get_config("tiny", num_classes=3), "dcs").eval()
    record = EpochRecord(2, 1.0, 0.75, 0.5, 0.4, (), None, 1.0, 0, CLASSES)
    export_best(model, TrainConfig(mode="dcs", preprocessing=PREP), record, tmp_path)
    card = read_card(tmp_path / "best.json")
    assert card.mode == "dcs" and card.classes == CLASSES
    assert card.metrics == {"valid_flip": {"accuracy": 0.75, "balanced_accuracy": 0.5}}
    assert set(card.provenance) == {"config", "epoch"}


def test_the_card_module_needs_neither_models_nor_torch() -> None:
    code = (
        "import sys, qcsfer.card; "
        "print(sorted(m for m in sys.modules if m.startswith(('qcsfer.models', 'torch'))))"
    )
    shown = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert shown.returncode == 0, shown.stderr
    assert shown.stdout.strip() == "[]"
