"""The shipped model: it loads offline and its recorded Valid accuracy is what it measures."""

from __future__ import annotations

import pytest

from qcsfer.engine.evaluate import evaluate
from qcsfer.pretrained import load_model


def test_default_model_loads_offline_with_its_metadata() -> None:
    model, meta = load_model()
    assert not model.training
    assert len(meta["classes"]) == 8 and meta["classes"][0] == "neutral"
    assert meta["preprocessing"]["image_size"] == 48 and meta["preprocessing"]["grayscale"]
    assert meta["provenance"]["dataset"].startswith("ferplus")


@pytest.mark.slow
def test_default_model_reproduces_its_recorded_valid_accuracy(ferplus_root) -> None:
    recorded = load_model()[1]["provenance"]["validation"]["flip"]["accuracy"]
    metrics = evaluate(
        None, "ferplus", ferplus_root, "valid", options={"label_mode": "majority"}, flip=True
    ).metrics
    assert metrics.total == 3191
    assert metrics.accuracy == pytest.approx(recorded, abs=0.002)
    assert metrics.accuracy >= 0.87  # the project's target for the shipped model
