"""Offline inference: face detection, expression recognition, export and explanations.

Importing this package needs neither torch nor onnxruntime; each backend imports its runtime
when a model is loaded.
"""

from ..imaging import ImageError
from .faces import Face
from .haar import HaarDetector
from .recognizer import ExpressionRecognizer
from .results import ImageResult, Prediction

__all__ = [
    "ExpressionRecognizer",
    "Face",
    "HaarDetector",
    "ImageError",
    "ImageResult",
    "Prediction",
]
