"""How a face becomes model input: one description for training, weights files and inference.

Torch-free, so the ONNX backend can read it where torch is not installed. It is saved with every
model (weights sidecar, exported files) and read back with `Preprocessing.from_dict`, which
requires every field: a model whose preprocessing is unknown must not be fed images prepared
with guessed defaults.
"""

from __future__ import annotations

import math
import operator
from dataclasses import dataclass
from typing import Any

from .errors import ConfigError
from .typed_data import from_dict

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def _size(name: str, value: object) -> int:
    if isinstance(value, bool):
        raise ConfigError(f"preprocessing {name} must be an integer, got {value!r}")
    try:
        size = operator.index(value)  # int and numpy integers, not floats or strings
    except TypeError:
        raise ConfigError(f"preprocessing {name} must be an integer, got {value!r}") from None
    if size < 1:
        raise ConfigError(f"preprocessing {name} must be >= 1, got {size}")
    return size


def _triple(name: str, value: object) -> tuple[float, float, float]:
    if isinstance(value, str | bytes) or not hasattr(value, "__iter__"):
        raise ConfigError(f"preprocessing {name} must be three numbers, got {value!r}")
    try:
        numbers = tuple(float(v) for v in value)  # type: ignore[union-attr]
    except (TypeError, ValueError):
        raise ConfigError(f"preprocessing {name} must be three numbers, got {value!r}") from None
    if len(numbers) != 3 or not all(math.isfinite(v) for v in numbers):
        raise ConfigError(f"preprocessing {name} must be three finite numbers, got {value!r}")
    return numbers  # type: ignore[return-value]


@dataclass(frozen=True)
class Preprocessing:
    """How a face becomes model input; saved with every model so inference matches training.

    The defaults (224 px RGB, ImageNet statistics) serve building a configuration in code; a
    saved model's preprocessing is always read complete (`from_dict`).
    """

    image_size: int = 224
    load_size: int = 224  # images are resized to this, then (centre/random) cropped to image_size
    grayscale: bool = False  # convert to gray, then repeat to the model's 3 channels
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD

    def __post_init__(self) -> None:
        # Normalise (lists -> tuples, numpy scalars -> Python numbers) while validating, so
        # equal settings compare equal however they were given.
        values = {
            "image_size": _size("image_size", self.image_size),
            "load_size": _size("load_size", self.load_size),
            "mean": _triple("mean", self.mean),
            "std": _triple("std", self.std),
        }
        if not isinstance(self.grayscale, bool):
            raise ConfigError(f"preprocessing grayscale must be true/false, got {self.grayscale!r}")
        if values["load_size"] < values["image_size"]:
            raise ConfigError(
                f"preprocessing load_size {values['load_size']} < image_size "
                f"{values['image_size']} (images are cropped from load_size to image_size)"
            )
        if min(values["std"]) <= 0:
            raise ConfigError(f"preprocessing std must be > 0, got {list(values['std'])}")
        for name, value in values.items():
            object.__setattr__(self, name, value)

    @classmethod
    def from_dict(cls, data: object) -> Preprocessing:
        """From saved metadata (JSON lists become tuples); every field required, no others."""
        return from_dict(cls, data, "preprocessing", complete=True)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready (tuples as lists); `from_dict` reads it back."""
        return {
            "image_size": self.image_size,
            "load_size": self.load_size,
            "grayscale": self.grayscale,
            "mean": list(self.mean),
            "std": list(self.std),
        }

    @property
    def channels(self) -> int:
        """Channels of the uint8 batch before normalisation (gray is repeated to 3 later)."""
        return 1 if self.grayscale else 3
