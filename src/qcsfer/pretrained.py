"""Where models come from: a shipped model by name, a run directory, or a weights file.

The shipped models live in `weights/` (package data, so they travel in the wheel). Each has a
registry entry, like torchvision's weights enums: its name, its file and what it is for; the
rest (classes, preprocessing, metrics, sources) is on its card. `default` is the first of
DEFAULT_ORDER that is installed: `general` once shipped, else `ferplus`, so a checkout keeps
working while the general model is not there yet.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from .card import ModelCard, is_onnx_file, read_card
from .errors import NotFoundError

if TYPE_CHECKING:
    from .models.base import BaseNetwork

log = logging.getLogger(__name__)

WEIGHTS_DIR = Path(__file__).parent / "weights"


@dataclass(frozen=True)
class ShippedModel:
    """One model shipped inside qcsfer: `--model NAME` finds WEIGHTS_DIR/STEM.safetensors."""

    name: str  # what --model takes
    stem: str  # the file name without suffix, in WEIGHTS_DIR
    purpose: str  # one line: when to use it

    @property
    def path(self) -> Path:
        """The tensor file (its card is beside it, STEM.json). Read at call time, so a test can
        point WEIGHTS_DIR elsewhere."""
        return WEIGHTS_DIR / f"{self.stem}.safetensors"

    def installed(self) -> bool:
        return self.path.is_file()


SHIPPED = (
    ShippedModel(
        "general",
        "general-qcs-small",
        "faces from anywhere (photos, film stills, webcams, posed): 48 px grey, four sources",
    ),
    ShippedModel(
        "ferplus",
        "ferplus-qcs-small",
        "FERPlus-style 48 px grey crops, and comparisons with published FERPlus results",
    ),
)
DEFAULT_ORDER = ("general", "ferplus")  # `default` is the first of these that is installed


def shipped(name: str) -> ShippedModel:
    """The registry entry called `name`; NotFoundError naming the shipped models otherwise."""
    for model in SHIPPED:
        if model.name == name:
            return model
    raise NotFoundError(f"no shipped model named {name!r}; shipped models: {_names()}")


def default_model() -> ShippedModel:
    """The shipped model `default` stands for: the first installed of DEFAULT_ORDER."""
    for name in DEFAULT_ORDER:
        if shipped(name).installed():
            return shipped(name)
    raise NotFoundError(
        f"no shipped model is installed in {WEIGHTS_DIR} (looked for "
        + ", ".join(shipped(name).path.name for name in DEFAULT_ORDER)
        + ")"
    )


_announced: set[str] = set()  # say once per process which model `default` is


def resolve_weights(weights: str | Path | None = None) -> Path:
    """None/'default' -> the default shipped model; a shipped model's name -> its file; a run
    directory -> its best.safetensors; else a file. A shipped name wins over a folder of that
    name in the current directory (write `./general` for the folder)."""
    name = "default" if weights is None else str(weights)
    if name == "default":
        model = default_model()
        if model.name not in _announced:
            _announced.add(model.name)
            log.info("model 'default' is %s (%s)", model.name, model.path.name)
        return model.path
    if name in (m.name for m in SHIPPED):
        model = shipped(name)
        if not model.installed():
            installed = [m.name for m in SHIPPED if m.installed()]
            raise NotFoundError(
                f"the shipped model {name!r} is not installed ({model.path} is missing); "
                f"installed: {', '.join(installed) or 'none'}"
            )
        return model.path
    path = Path(name)
    if path.is_dir():
        path = path / "best.safetensors"
    if not path.is_file():
        looks_like_a_name = not Path(name).suffix and len(Path(name).parts) == 1
        hint = f" (nor a shipped model: {_names()}, or 'default')" if looks_like_a_name else ""
        raise NotFoundError(f"no weights file at {path}{hint}")
    return path


def _names() -> str:
    return ", ".join(m.name for m in SHIPPED)


def load_model(weights: str | Path | None = None) -> tuple[BaseNetwork, ModelCard]:
    """The inference network in eval mode (only its tensors are read) and the model's card."""
    from .models.weights import load_weights

    return load_weights(resolve_weights(weights), base_only=True)


def load_card(weights: str | Path | None = None) -> ModelCard:
    """The card of a shipped model, a run directory, a weights file or an exported .onnx file
    (the card embedded in it), without reading tensors."""
    path = resolve_weights(weights)
    if is_onnx_file(path):
        from .inference.contract import onnx_card, onnx_session

        return onnx_card(onnx_session(path), str(path))
    return read_card(path)


def __getattr__(name: str) -> str:
    """DEFAULT_WEIGHTS, read by benchmarks to name their results: the stem of the model
    `default` is now (computed when asked, since it depends on what is installed)."""
    if name == "DEFAULT_WEIGHTS":
        return default_model().stem
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
