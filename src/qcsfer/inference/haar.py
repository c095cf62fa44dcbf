"""The OpenCV Haar-cascade face detector.

Haar cascades ship inside `opencv-python-headless` 4.x (not 5.x), need no weights download and
run in a few milliseconds per image on a CPU. `haarcascade_frontalface_alt2` is the default: on
our composed test set it gave no false alarms where `..._default` did (benchmarks/detectors.py).
Detection runs on a copy downscaled to at most `max_side` pixels (Haar cost grows with the pixel
count and faces in huge photos are large anyway); boxes are mapped back to original pixels.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import UsageError, WeightsError
from .faces import HAAR_MARGIN, Face, sort_faces

CASCADES = {
    "alt2": "haarcascade_frontalface_alt2.xml",
    "alt": "haarcascade_frontalface_alt.xml",
    "default": "haarcascade_frontalface_default.xml",
    "alt_tree": "haarcascade_frontalface_alt_tree.xml",
}


class HaarDetector:
    """Haar-cascade face detector on RGB (or gray) uint8 arrays."""

    margin = HAAR_MARGIN  # the crop margin that frames its boxes like the training faces

    def __init__(
        self,
        cascade: str = "alt2",
        *,
        scale_factor: float = 1.1,
        min_neighbors: int = 5,
        min_size: int = 24,
        max_side: int = 1280,
    ) -> None:
        import cv2

        path = Path(cascade)
        if cascade in CASCADES:
            path = Path(cv2.data.haarcascades) / CASCADES[cascade]
        if not path.is_file():
            raise FileNotFoundError(
                f"no Haar cascade {cascade!r}: give one of {sorted(CASCADES)} or an XML file"
            )
        try:  # OpenCV raises SystemError (not cv2.error) for files that are not XML at all
            self._classifier = cv2.CascadeClassifier(str(path))
        except (cv2.error, SystemError):
            self._classifier = None
        if self._classifier is None or self._classifier.empty():
            raise WeightsError(f"{path}: not a loadable OpenCV Haar cascade (an XML file)")
        if scale_factor <= 1 or min_neighbors < 0 or min_size < 1 or max_side < 32:
            raise UsageError(
                "need scale_factor > 1, min_neighbors >= 0, min_size >= 1, max_side >= 32"
            )
        self.name = cascade
        self.scale_factor = scale_factor
        self.min_neighbors = min_neighbors
        self.min_size = min_size
        self.max_side = max_side

    def detect(self, image: np.ndarray) -> list[Face]:
        """Faces in an H x W x 3 RGB (or H x W gray) uint8 image, in reading order."""
        import cv2

        if image.ndim == 3:
            gray = cv2.cvtColor(np.ascontiguousarray(image), cv2.COLOR_RGB2GRAY)
        else:
            gray = np.ascontiguousarray(image)
        height, width = gray.shape
        scale = min(1.0, self.max_side / max(height, width))
        if scale < 1.0:
            size = (max(1, round(width * scale)), max(1, round(height * scale)))
            gray = cv2.resize(gray, size, interpolation=cv2.INTER_AREA)
        if min(gray.shape) < self.min_size:
            return []
        gray = cv2.equalizeHist(gray)
        boxes, votes = self._classifier.detectMultiScale2(
            gray,
            scaleFactor=self.scale_factor,
            minNeighbors=self.min_neighbors,
            minSize=(self.min_size, self.min_size),
        )
        faces = []
        for (x, y, w, h), n in zip(np.asarray(boxes).reshape(-1, 4), np.ravel(votes), strict=True):
            x0, y0 = round(x / scale), round(y / scale)
            x1, y1 = min(width, round((x + w) / scale)), min(height, round((y + h) / scale))
            if x1 > x0 and y1 > y0:
                faces.append(Face(max(0, x0), max(0, y0), x1, y1, float(n)))
        return sort_faces(faces)
