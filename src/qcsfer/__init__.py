"""QCS: Quadruplet Cross Similarity for facial expression recognition."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

if TYPE_CHECKING:
    from .inference.recognizer import ExpressionRecognizer
    from .pretrained import load_model

# Public names imported on first use, so `import qcsfer` stays light (no torch, no OpenCV).
_LAZY = {
    "ExpressionRecognizer": "qcsfer.inference.recognizer",
    "load_model": "qcsfer.pretrained",
}

__all__ = ["ExpressionRecognizer", "__version__", "load_model"]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'qcsfer' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
