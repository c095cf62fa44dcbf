"""Face detectors by name: what `--detector` and `ExpressionRecognizer(detector=...)` accept.

"auto" depends on what is read (benchmarks/detectors.py, docs/benchmarks.md "Face detectors"):
still photos get MTCNN, which finds small faces in large photos (88% of the composed scenes'
faces, BlazeFace 35-69%); videos and live cameras get BlazeFace's 256 px model, which finds
faces of about a tenth of the frame or more about as well as MTCNN (94.5% against 88.5% on the
photo path, 74 against 77 of 80 in frames like the benchmark video's) at a tenth of its CPU time.
"""

from __future__ import annotations

import logging
from typing import Literal

from ..errors import UsageError
from .faces import Detector
from .haar import CASCADES, HaarDetector

log = logging.getLogger(__name__)

Purpose = Literal["photo", "video", "live"]
BLAZEFACE = {"blazeface": "front", "blazeface-back": "back"}
# What "auto" resolves to for each purpose (MTCNN falls back to Haar alt2 when not installed).
AUTO = {"photo": "mtcnn", "video": "blazeface-back", "live": "blazeface-back"}
NAMES = ("auto", "mtcnn", *BLAZEFACE, *CASCADES)  # and any Haar cascade XML file


def is_detector_name(name: str) -> bool:
    """Whether `make_detector` accepts `name`, without loading anything (for checking recipes)."""
    return name in NAMES or name.endswith(".xml")


def make_detector(name: str = "auto", purpose: Purpose = "photo") -> Detector:
    """ "auto" (by purpose, see AUTO), "mtcnn", "blazeface" (128 px, faces near the camera),
    "blazeface-back" (256 px), or a Haar cascade: one of CASCADES or an XML file."""
    if name == "auto":
        if purpose not in AUTO:
            raise UsageError(f"purpose must be one of {sorted(AUTO)}, got {purpose!r}")
        if AUTO[purpose] != "mtcnn":
            return make_detector(AUTO[purpose])
        try:
            return make_detector("mtcnn")
        except (ImportError, FileNotFoundError) as exc:  # its weights (or torch) not installed
            log.warning("face detector: Haar cascade alt2, because %s", exc)
            return HaarDetector("alt2")
    if name == "mtcnn":
        from .mtcnn import MTCNNDetector

        return MTCNNDetector()
    if name in BLAZEFACE:
        from .detection.blazeface import BlazeFaceDetector

        return BlazeFaceDetector(BLAZEFACE[name])
    return HaarDetector(name)
