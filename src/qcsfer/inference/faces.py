"""Face detection (OpenCV Haar cascades, or MTCNN) and square face crops like the training faces.

Haar cascades ship inside `opencv-python-headless` 4.x (not 5.x), need no weights download and
run in a few milliseconds per image on a CPU. `haarcascade_frontalface_alt2` is the cascade we
use: on our composed test set it gave no false alarms where `..._default` did
(benchmarks/detectors.py). The default detector, "auto", is MTCNN when its weights are
installed (more faces found, no false alarms there) and alt2 otherwise.

Detection runs on a copy downscaled to at most `max_side` pixels (Haar cost grows with the pixel
count and faces in huge photos are large anyway); boxes are mapped back to original pixels and
the crop is taken from the full-resolution image. MTCNN (`qcsfer.inference.mtcnn`, weights
from an optional install) finds more faces and places eye landmarks, which `align=True` uses to
level the eyes. Alignment is off by default: FER2013/FERPlus training faces are not
eye-aligned, so rotating test faces moves them away from what the shipped model saw.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import numpy as np

# Crop side = the box's longer side * (1 + 2 * margin), centred on the box. Each detector has its
# own margin, measured on the photo path of benchmarks/robustness.py (docs/benchmarks.md): there
# a FERPlus crop is 1.08x the alt2 box (median), but alt2's found faces read as well from -0.05
# to 0.05 (89.9-91.3% of 288, their direct crops 89.6%), so 0.02 (1.04x measured before) stays.
HAAR_MARGIN = 0.02
DEFAULT_MARGIN = HAAR_MARGIN  # for given boxes and detectors without a margin of their own

log = logging.getLogger(__name__)

CASCADES = {
    "alt2": "haarcascade_frontalface_alt2.xml",
    "alt": "haarcascade_frontalface_alt.xml",
    "default": "haarcascade_frontalface_default.xml",
    "alt_tree": "haarcascade_frontalface_alt_tree.xml",
}


@dataclass(frozen=True, order=True)
class Face:
    """A face box in original image pixels (x1, y1 exclusive) and its detector score.

    `score`: for Haar cascades the number of overlapping windows merged into the box (more =
    surer, not a probability), for MTCNN the face probability; None for boxes not found by a
    detector (given, or the whole image). `landmarks` (MTCNN only): (x, y) of the left eye,
    right eye, nose tip, left and right mouth corner, "left" meaning smaller x in the image.
    Ordering is left-to-right, then top-to-bottom.
    """

    x0: int
    y0: int
    x1: int
    y1: int
    score: float | None = None
    landmarks: tuple[tuple[float, float], ...] | None = field(default=None, compare=False)

    def __post_init__(self) -> None:
        if self.x1 <= self.x0 or self.y1 <= self.y0:
            raise ValueError(f"empty face box ({self.x0}, {self.y0}, {self.x1}, {self.y1})")

    @property
    def box(self) -> tuple[int, int, int, int]:
        return (self.x0, self.y0, self.x1, self.y1)

    @property
    def width(self) -> int:
        return self.x1 - self.x0

    @property
    def height(self) -> int:
        return self.y1 - self.y0


def sort_faces(faces: Iterable[Face]) -> list[Face]:
    """Stable reading order: left-to-right, then top-to-bottom (then size)."""
    return sorted(faces, key=lambda f: (f.x0, f.y0, f.x1, f.y1))


def whole_image(width: int, height: int) -> Face:
    """The whole image as the face (pre-cropped faces such as FERPlus)."""
    return Face(0, 0, width, height, None)


def given_box(box: Sequence[float], width: int, height: int) -> Face:
    """A user-supplied (x0, y0, x1, y1) box, clipped to the image; ValueError if it misses it."""
    if len(box) != 4:
        raise ValueError(f"a box is x0,y0,x1,y1; got {list(box)}")
    x0, y0, x1, y1 = (round(float(v)) for v in box)
    x0, x1 = max(0, min(x0, width)), max(0, min(x1, width))
    y0, y1 = max(0, min(y0, height)), max(0, min(y1, height))
    if x1 <= x0 or y1 <= y0:
        raise ValueError(f"box {list(box)} does not overlap the {width}x{height} image")
    return Face(x0, y0, x1, y1, None)


def parse_box(text: str) -> tuple[float, float, float, float]:
    """'x0,y0,x1,y1' -> numbers (for the command line)."""
    parts = text.replace(" ", "").split(",")
    try:
        values = tuple(float(p) for p in parts)
    except ValueError:
        values = ()
    if len(values) != 4:
        raise ValueError(f"a box is x0,y0,x1,y1 in pixels, got {text!r}")
    return values  # type: ignore[return-value]


class Detector(Protocol):
    name: str

    def detect(self, image: np.ndarray) -> list[Face]: ...


def make_detector(name: str = "auto") -> Detector:
    """ "auto" (MTCNN if its weights are installed, else Haar alt2), "mtcnn", or a Haar cascade:
    one of CASCADES or an XML file."""
    if name == "auto":
        try:
            return make_detector("mtcnn")
        except (ImportError, FileNotFoundError) as exc:  # its weights (or torch) not installed
            log.warning("face detector: Haar cascade alt2, because %s", exc)
            return FaceDetector("alt2")
    if name == "mtcnn":
        from .mtcnn import MTCNNDetector

        return MTCNNDetector()
    return FaceDetector(name)


class FaceDetector:
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
            raise ValueError(f"{path}: not a loadable OpenCV Haar cascade (an XML file)")
        if scale_factor <= 1 or min_neighbors < 0 or min_size < 1 or max_side < 32:
            raise ValueError(
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


def crop_box(face: Face, margin: float = DEFAULT_MARGIN) -> tuple[int, int, int, int]:
    """The square crop around a face: centred on the box, side = longer side * (1 + 2 margin)."""
    side = max(1, round(max(face.width, face.height) * (1 + 2 * margin)))
    cx, cy = (face.x0 + face.x1) / 2, (face.y0 + face.y1) / 2
    x0, y0 = round(cx - side / 2), round(cy - side / 2)
    return x0, y0, x0 + side, y0 + side


def crop_face(
    image: np.ndarray, face: Face, margin: float = DEFAULT_MARGIN, align: bool = False
) -> np.ndarray:
    """Square crop from the full-resolution image; parts outside it repeat the border pixels.

    Repeating the border (rather than moving the square inside the image) keeps the face centred
    at the scale training faces have, and avoids the hard black edges of zero padding.
    align=True, for faces with landmarks: the same square, rotated about its centre so that the
    eyes are level.
    """
    x0, y0, x1, y1 = crop_box(face, margin)
    if align and face.landmarks:
        import cv2

        (left_x, left_y), (right_x, right_y) = face.landmarks[:2]
        angle = math.degrees(math.atan2(right_y - left_y, right_x - left_x))
        matrix = cv2.getRotationMatrix2D(((x0 + x1) / 2, (y0 + y1) / 2), angle, 1.0)
        matrix[:, 2] -= (x0, y0)  # the square's corner becomes the crop's origin
        return cv2.warpAffine(
            np.ascontiguousarray(image),
            matrix,
            (x1 - x0, y1 - y0),
            flags=cv2.INTER_LINEAR,
            borderMode=cv2.BORDER_REPLICATE,
        )
    height, width = image.shape[:2]
    inner = image[max(0, y0) : min(height, y1), max(0, x0) : min(width, x1)]
    pad = [(max(0, -y0), max(0, y1 - height)), (max(0, -x0), max(0, x1 - width))]
    if image.ndim == 3:
        pad.append((0, 0))
    if any(p for pair in pad for p in pair):
        inner = np.pad(inner, pad, mode="edge")
    return np.ascontiguousarray(inner)
