"""How a face can differ from a clean FERPlus crop: framing shifts, image quality, a mirror.

Each condition turns one face crop (RGB uint8, H x W x 3) into the crop the model reads instead,
of the same size, drawing its parameters from the generator it is given (so a seed fixes every
face's parameters). Conditions act on the face at its own resolution (48 px for FERPlus), the
resolution the model reads; framing shifts resample the crop with the border pixels repeated
beyond its edges, as `crop_face` does for faces near an image border.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import cv2
import numpy as np

Transform = Callable[[np.ndarray, np.random.Generator], np.ndarray]


@dataclass(frozen=True)
class Condition:
    name: str
    description: str
    apply: Transform


def reframe(
    face: np.ndarray, scale: float = 1.0, dx: float = 0.0, dy: float = 0.0, angle: float = 0.0
) -> np.ndarray:
    """The crop a detector with other framing would give: the square of side `scale` x the
    face's, centred (dx, dy) face-sides off its centre, turned by `angle` degrees, resampled to
    the face's size."""
    side = face.shape[0]
    centre = (side - 1) / 2
    theta = math.radians(angle)
    rotation = scale * np.array(
        [[math.cos(theta), -math.sin(theta)], [math.sin(theta), math.cos(theta)]]
    )
    source_centre = np.array([centre + dx * side, centre + dy * side])
    shift = source_centre - rotation @ np.array([centre, centre])
    matrix = np.hstack([rotation, shift[:, None]])  # output pixel -> source pixel
    return cv2.warpAffine(
        np.ascontiguousarray(face),
        matrix,
        (side, side),
        flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
        borderMode=cv2.BORDER_REPLICATE,
    )


def _zoom_in(face: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    return reframe(face, scale=rng.uniform(0.75, 0.9))


def _zoom_out(face: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    return reframe(face, scale=rng.uniform(1.15, 1.4))


def _offset(face: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    dx, dy = rng.uniform(-0.15, 0.15, size=2)
    return reframe(face, dx=dx, dy=dy)


def _rotation(face: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    return reframe(face, angle=rng.choice([-1.0, 1.0]) * rng.uniform(10, 20))


def _blur(face: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    sigma = rng.uniform(1.0, 2.0)
    return cv2.GaussianBlur(face, (0, 0), sigmaX=sigma, borderType=cv2.BORDER_REPLICATE)


def _jpeg(face: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    quality = int(rng.integers(15, 41))
    ok, data = cv2.imencode(".jpg", face[:, :, ::-1], [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:
        raise RuntimeError("OpenCV could not encode a JPEG")
    return np.ascontiguousarray(cv2.imdecode(data, cv2.IMREAD_COLOR)[:, :, ::-1])


def _photometric(face: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    gamma = math.exp(rng.uniform(math.log(0.5), math.log(2.0)))
    contrast, brightness = rng.uniform(0.6, 1.4), rng.uniform(-40, 40)
    x = (face.astype(np.float64) / 255) ** gamma * 255
    x = (x - 128) * contrast + 128 + brightness
    return np.clip(np.rint(x), 0, 255).astype(np.uint8)


def _noise(face: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    sigma = rng.uniform(10, 25)
    grain = rng.normal(0, sigma, size=face.shape[:2])[:, :, None]  # luminance noise
    return np.clip(np.rint(face + grain), 0, 255).astype(np.uint8)


def _low_resolution(face: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    side = face.shape[0]
    small = cv2.resize(face, (24, 24), interpolation=cv2.INTER_AREA)
    return cv2.resize(small, (side, side), interpolation=cv2.INTER_LINEAR)


def _flip(face: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    return np.ascontiguousarray(face[:, ::-1])


def _clean(face: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    return face


CLEAN = Condition("clean", "the Valid face as it is (direct crop, single view)", _clean)

CONDITIONS = (
    Condition("flip", "mirrored left-right", _flip),
    Condition("zoom in", "crop scale 0.75-0.9 (tighter than the face)", _zoom_in),
    Condition("zoom out", "crop scale 1.15-1.4 (looser)", _zoom_out),
    Condition("offset", "crop shifted up to 15% of the box in x and y", _offset),
    Condition("rotation", "in-plane rotation 10-20 degrees, either way", _rotation),
    Condition("blur", "Gaussian blur, sigma 1-2 px", _blur),
    Condition("jpeg", "JPEG quality 15-40", _jpeg),
    Condition("photometric", "gamma 0.5-2, contrast 0.6-1.4, brightness -40..40", _photometric),
    Condition("noise", "Gaussian luminance noise, sigma 10-25", _noise),
    Condition("low resolution", "downscaled to 24 px and back", _low_resolution),
)
