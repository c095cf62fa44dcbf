"""Where models come from: the shipped default, a run directory, or a weights file."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .models.base import BaseNetwork

WEIGHTS_DIR = Path(__file__).parent / "weights"
DEFAULT_WEIGHTS = "ferplus-qcs-small"


def resolve_weights(weights: str | Path | None = None) -> Path:
    """None/'default' -> the shipped model; a run directory -> its best.safetensors; else a file."""
    if weights is None or str(weights) == "default":
        path = WEIGHTS_DIR / f"{DEFAULT_WEIGHTS}.safetensors"
        if not path.is_file():
            raise FileNotFoundError(f"the default model is not installed ({path} is missing)")
        return path
    path = Path(weights)
    if path.is_dir():
        path = path / "best.safetensors"
    if not path.is_file():
        raise FileNotFoundError(f"no weights file at {path}")
    return path


def load_model(weights: str | Path | None = None) -> tuple[BaseNetwork, dict[str, Any]]:
    """The inference network in eval mode and its metadata (classes, preprocessing, provenance)."""
    from .models.weights import load_weights

    base, metadata = load_weights(resolve_weights(weights), base_only=True)
    return base.eval(), metadata
