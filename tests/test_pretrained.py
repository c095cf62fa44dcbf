"""The shipped `ferplus` model: it loads offline and its recorded Valid accuracy is what it
measures. (Which model `default` is, and the registry: tests/test_shipped_models.py.)"""

from __future__ import annotations

import pytest

from qcsfer.cli import main
from qcsfer.engine.evaluate import evaluate
from qcsfer.models import BaseNetwork
from qcsfer.pretrained import load_card, load_model


def test_ferplus_model_loads_offline_with_its_card() -> None:
    model, card = load_model("ferplus")
    assert not model.training and isinstance(model, BaseNetwork)
    assert len(card.classes) == 8 and card.classes[0] == "neutral"
    assert card.preprocessing.image_size == 48 and card.preprocessing.grayscale
    assert card.provenance["dataset"].startswith("ferplus")
    # A calibrated card: its metrics are those of its `dataset` operating point, fitted on Valid.
    dataset_point = card.provenance["calibration"]["operating_points"]["dataset"]
    assert card.accuracy() == ("valid_flip", dataset_point["accuracy"])


def test_info_ferplus_prints_the_card_with_its_accuracy(capsys: pytest.CaptureFixture) -> None:
    assert main(["info", "ferplus"]) == 0
    out = capsys.readouterr().out
    accuracy = load_card("ferplus").metrics["valid_flip"]["accuracy"]
    assert f"metrics valid_flip: accuracy {100 * accuracy:.2f}%" in out
    assert "classes (8): neutral, happiness" in out and "training graph (qcs" in out


@pytest.mark.slow
def test_ferplus_model_reproduces_its_recorded_valid_accuracy(ferplus_root) -> None:
    recorded = load_card("ferplus").metrics["valid_flip"]["accuracy"]
    metrics = evaluate(
        "ferplus", "ferplus", ferplus_root, "valid", options={"label_mode": "majority"}, flip=True
    ).metrics
    assert metrics.total == 3191
    assert metrics.accuracy == pytest.approx(recorded, abs=0.002)
    assert metrics.accuracy >= 0.87  # the project's target for the shipped model
