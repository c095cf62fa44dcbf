"""Models that several test files build the same way (seeded, so every build is equal)."""

from __future__ import annotations

from typing import Any

import torch

from qcsfer.models.configs import get_config
from qcsfer.models.qcs import QCSModel


def paper_model() -> QCSModel:
    """The paper-size training model (7 classes, QCS) in eval mode."""
    torch.manual_seed(0)
    return QCSModel(get_config("paper", num_classes=7), "qcs").eval()


def tiny_model(mode: str = "qcs", **overrides: Any) -> QCSModel:
    """The tiny configuration with 5 classes unless `overrides` say otherwise."""
    torch.manual_seed(0)
    return QCSModel(get_config("tiny", **{"num_classes": 5, **overrides}), mode)
