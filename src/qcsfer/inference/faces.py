"""Faces: the `Face` every detector returns, the `Detector` contract, and square face crops.

Detectors implement the contract elsewhere (`haar.py`, `mtcnn.py`, `detection/blazeface.py`;
`detectors.py` picks one by name), so this module imports none of them. Crops are taken from the
full-resolution image, square and with a small margin, like the training faces; `align=True`
levels the eyes of faces with landmarks (MTCNN, BlazeFace). Alignment is off by default:
FER2013/FERPlus training faces are not eye-aligned, so rotating test faces moves them away from
what the shipped model saw.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from ..errors import ImageError, UsageError

# Crop side = the box's longer side * (1 + 2 * margin), centred on the box. Each detector has its
# own margin, measured on the photo path of benchmarks/robustness.py (docs/benchmarks.md): there
# a FERPlus crop is 1.08x the alt2 box (median), but alt2's found faces read as well from -0.05
# to 0.05 (89.9-91.3% of 288, their direct crops 89.6%), so 0.02 (1.04x measured before) stays.
HAAR_MARGIN = 0.02
DEFAULT_MARGIN = HAAR_MARGIN  # for given boxes and detectors without a margin of their own
# The smallest face side classified: below it no expression is left to read (FERPlus faces are
# 48 px, and the detectors look for nothing under 20 px), and upscaling it only invents one.
MIN_FACE_SIDE = 8
_AT_LEAST = f"a face needs at least {MIN_FACE_SIDE}x{MIN_FACE_SIDE} pixels"

Box = tuple[int, int, int, int]  # x0, y0, x1, y1 in image pixels (x1, y1 exclusive)


@dataclass(frozen=True, order=True)
class Face:
    """A face box in original image pixels (x1, y1 exclusive) and its detector score.

    `score`: for Haar cascades the number of overlapping windows merged into the box (more =
    surer, not a probability), for MTCNN and BlazeFace the face probability; None for boxes not
    found by a detector (given, or the whole image). `landmarks`, (x, y) in image pixels, the
    two eyes first ("left" meaning smaller x in the image): MTCNN's left eye, right eye, nose
    tip, left and right mouth corner; BlazeFace's right eye (the person's, the image's left),
    left eye, nose tip, mouth centre, right and left ear tragion.
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
    def box(self) -> Box:
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
    if min(width, height) < MIN_FACE_SIDE:
        raise ImageError(f"a {width}x{height} image is too small to be a face ({_AT_LEAST})")
    return Face(0, 0, width, height, None)


def given_box(box: Sequence[float], width: int, height: int) -> Face:
    """A user-supplied (x0, y0, x1, y1) box, clipped to the image; UsageError if it misses it."""
    if len(box) != 4:
        raise UsageError(f"a box is x0,y0,x1,y1; got {list(box)}")
    x0, y0, x1, y1 = (round(float(v)) for v in box)
    x0, x1 = max(0, min(x0, width)), max(0, min(x1, width))
    y0, y1 = max(0, min(y0, height)), max(0, min(y1, height))
    if x1 <= x0 or y1 <= y0:
        raise UsageError(f"box {list(box)} does not overlap the {width}x{height} image")
    if min(x1 - x0, y1 - y0) < MIN_FACE_SIDE:
        inside = f"{x1 - x0}x{y1 - y0}"
        raise UsageError(
            f"box {list(box)} is {inside} pixels in the image: too small ({_AT_LEAST})"
        )
    return Face(x0, y0, x1, y1, None)


def parse_box(text: str) -> tuple[float, float, float, float]:
    """'x0,y0,x1,y1' -> numbers (for the command line)."""
    parts = text.replace(" ", "").split(",")
    try:
        values = tuple(float(p) for p in parts)
    except ValueError:
        values = ()
    if len(values) != 4 or not all(math.isfinite(v) for v in values):
        raise UsageError(f"a box is x0,y0,x1,y1 in pixels, got {text!r}")
    return values  # type: ignore[return-value]


class Detector(Protocol):
    name: str

    def detect(self, image: np.ndarray) -> list[Face]: ...


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
