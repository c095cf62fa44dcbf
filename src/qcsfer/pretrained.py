"""Where models come from: the shipped default, a run directory, or a weights file."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from .card import ModelCard, is_onnx_file, read_card
from .errors import NotFoundError

if TYPE_CHECKING:
    from .models.base import BaseNetwork

WEIGHTS_DIR = Path(__file__).parent / "weights"
DEFAULT_WEIGHTS = "ferplus-qcs-small"


def resolve_weights(weights: str | Path | None = None) -> Path:
    """None/'default' -> the shipped model; a run directory -> its best.safetensors; else a file."""
    if weights is None or str(weights) == "default":
        path = WEIGHTS_DIR / f"{DEFAULT_WEIGHTS}.safetensors"
        if not path.is_file():
            raise NotFoundError(f"the default model is not installed ({path} is missing)")
        return path
    path = Path(weights)
    if path.is_dir():
        path = path / "best.safetensors"
    if not path.is_file():
        raise NotFoundError(f"no weights file at {path}")
    return path


def load_model(weights: str | Path | None = None) -> tuple[BaseNetwork, ModelCard]:
    """The inference network in eval mode (only its tensors are read) and the model's card."""
    from .models.weights import load_weights

    return load_weights(resolve_weights(weights), base_only=True)


def load_card(weights: str | Path | None = None) -> ModelCard:
    """The card of 'default', a run directory, a weights file or an exported .onnx file (the
    card embedded in it), without reading tensors."""
    path = resolve_weights(weights)
    if is_onnx_file(path):
        from .inference.contract import onnx_card, onnx_session

        return onnx_card(onnx_session(path), str(path))
    return read_card(path)
