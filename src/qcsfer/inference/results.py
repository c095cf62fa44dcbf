"""What recognition returns: one `Prediction` per face, one `ImageResult` per image or frame.

A leaf of the inference package: the recognizer, the video pipeline, reports and the server
all speak these types, so none of them needs to import another for them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..errors import WeightsError
from .faces import Box, Face


@dataclass(frozen=True)
class Prediction:
    """One face: where it is, what expression, how sure, and every class probability."""

    box: Box  # x0, y0, x1, y1 in original image pixels (x1, y1 exclusive)
    label: str
    confidence: float  # probability of `label`
    probabilities: dict[str, float]
    detector_score: float | None  # Haar: windows merged; MTCNN: probability; None: not detected
    landmarks: tuple[tuple[float, float], ...] | None = None  # MTCNN: eyes, nose, mouth corners

    @classmethod
    def from_probabilities(
        cls, face: Face, probabilities: np.ndarray, classes: Sequence[str]
    ) -> Prediction:
        """The prediction for `face` from its class probabilities (in `classes` order)."""
        if len(probabilities) != len(classes):
            raise WeightsError(f"{len(probabilities)} probabilities for {len(classes)} classes")
        best = int(np.argmax(probabilities))
        return cls(
            box=face.box,
            label=classes[best],
            confidence=float(probabilities[best]),
            probabilities={c: float(p) for c, p in zip(classes, probabilities, strict=True)},
            detector_score=face.score,
            landmarks=face.landmarks,
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "box": list(self.box),
            "label": self.label,
            "confidence": self.confidence,
            "probabilities": dict(self.probabilities),
            "detector_score": self.detector_score,
            "landmarks": None if self.landmarks is None else [list(p) for p in self.landmarks],
        }


@dataclass
class ImageResult:
    """Everything about one input image (or video frame), including why it failed."""

    source: str
    predictions: list[Prediction] = field(default_factory=list)
    width: int | None = None
    height: int | None = None
    frame: int | None = None
    error: str | None = None
    image: np.ndarray | None = field(default=None, repr=False)  # RGB, only when asked to keep

    @property
    def ok(self) -> bool:
        return self.error is None

    def to_dict(self) -> dict[str, Any]:
        return {
            "file": self.source,
            "frame": self.frame,
            "width": self.width,
            "height": self.height,
            "error": self.error,
            "faces": [p.to_dict() for p in self.predictions],
        }
