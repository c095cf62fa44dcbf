"""Face detectors by name: what `--detector` and `ExpressionRecognizer(detector=...)` accept."""

from __future__ import annotations

import logging

from .faces import Detector
from .haar import HaarDetector

log = logging.getLogger(__name__)


def make_detector(name: str = "auto") -> Detector:
    """ "auto" (MTCNN if its weights are installed, else Haar alt2), "mtcnn", or a Haar cascade:
    one of CASCADES or an XML file."""
    if name == "auto":
        try:
            return make_detector("mtcnn")
        except (ImportError, FileNotFoundError) as exc:  # its weights (or torch) not installed
            log.warning("face detector: Haar cascade alt2, because %s", exc)
            return HaarDetector("alt2")
    if name == "mtcnn":
        from .mtcnn import MTCNNDetector

        return MTCNNDetector()
    if name in ("blazeface", "blazeface-back"):
        from .detection.blazeface import BlazeFaceDetector

        return BlazeFaceDetector("front" if name == "blazeface" else "back")
    return HaarDetector(name)
