"""The photo path: a Valid face pasted into a photo-like scene and read by the full recognizer.

Each face is upscaled (bicubic) to 80-300 px, tinted to a skin-like colour half of the time, and
pasted at a random place on a canvas 1.5-4 times its size: plain, a gradient, smooth noise, or
a patch of a photo. `ExpressionRecognizer(detector=...)` then finds and reads every face in the
scene, exactly as `qcsfer predict` would. The pasted square is where the FERPlus crop lies, so
it is the true box: the detection matching it (`face_matching.matches`) is the face found, and the
detected box's geometry against it shows how the detector frames a face compared with FERPlus.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from face_matching import matches
from PIL import Image

from qcsfer.imaging import read_image
from qcsfer.inference.faces import Face
from qcsfer.inference.model_input import FaceBatch
from qcsfer.inference.recognizer import ExpressionRecognizer

Box = tuple[float, float, float, float]
BACKGROUNDS = ("plain", "gradient", "noise", "photo")


@dataclass
class Scene:
    image: np.ndarray  # RGB uint8
    truth: Box  # the pasted face square
    background: str


@dataclass
class Reading:
    """What one detector made of one scene."""

    found: bool
    label: int = -1  # predicted class index (recognizer's own margin); -1: face not found
    false_alarms: int = 0
    geometry: tuple[float, float, float, float] | None = None  # see `box_geometry`
    crops: list[FaceBatch] = field(default_factory=list, repr=False)  # one per margin swept


def load_photos(folder: Path) -> list[np.ndarray]:
    """Background photos; the astronaut's own face is left out (it would be a second face)."""
    photos = []
    for path in sorted(folder.glob("*")):
        if path.suffix.lower() not in (".png", ".jpg", ".jpeg"):
            continue
        image = read_image(path)
        if path.stem == "astronaut":
            image = image[200:]  # below the face: suit, flag, background
        photos.append(image)
    if not photos:
        raise SystemExit(f"no background photos in {folder}")
    return photos


def background(
    kind: str, width: int, height: int, rng: np.random.Generator, photos: list[np.ndarray]
) -> np.ndarray:
    if kind == "plain":
        return np.broadcast_to(rng.integers(30, 226, 3).astype(np.uint8), (height, width, 3))
    if kind == "gradient":
        start, end = rng.integers(0, 256, (2, 3))
        angle = rng.uniform(0, 2 * np.pi)
        ys, xs = np.mgrid[0:height, 0:width]
        t = xs * np.cos(angle) + ys * np.sin(angle)
        t = (t - t.min()) / max(np.ptp(t), 1)
        return (start + (end - start) * t[:, :, None]).astype(np.uint8)
    if kind == "noise":
        cell = int(rng.integers(8, 33))
        small = rng.integers(0, 256, (height // cell + 2, width // cell + 2, 3), dtype=np.uint8)
        return np.asarray(Image.fromarray(small).resize((width, height), Image.BILINEAR))
    photo = photos[int(rng.integers(0, len(photos)))]
    fraction = rng.uniform(0.4, 1.0)
    ph, pw = photo.shape[:2]
    ch, cw = max(8, round(ph * fraction)), max(8, round(pw * fraction))
    y, x = int(rng.integers(0, ph - ch + 1)), int(rng.integers(0, pw - cw + 1))
    patch = Image.fromarray(np.ascontiguousarray(photo[y : y + ch, x : x + cw]))
    return np.asarray(patch.resize((width, height), Image.BILINEAR))


def make_scene(face: np.ndarray, rng: np.random.Generator, photos: list[np.ndarray]) -> Scene:
    """One face (RGB uint8) in a photo-like scene, with its true box."""
    side = int(rng.integers(80, 301))
    width = min(1280, round(side * rng.uniform(1.5, 4.0)))
    height = min(1280, round(side * rng.uniform(1.5, 3.5)))
    kind = BACKGROUNDS[int(rng.integers(0, len(BACKGROUNDS)))]
    canvas = np.array(background(kind, width, height, rng, photos))
    pasted = np.asarray(Image.fromarray(face).resize((side, side), Image.BICUBIC), np.float64)
    if rng.random() < 0.5:
        tint = np.array([1.0, rng.uniform(0.75, 0.9), rng.uniform(0.55, 0.8)])
        pasted = pasted * tint
    x, y = int(rng.integers(0, width - side + 1)), int(rng.integers(0, height - side + 1))
    canvas[y : y + side, x : x + side] = np.clip(np.rint(pasted), 0, 255).astype(np.uint8)
    return Scene(canvas, (x, y, x + side, y + side), kind)


def box_geometry(face: Face, truth: Box) -> tuple[float, float, float, float]:
    """(true side / box's longer side, box centre's x and y offsets in true sides, box h / w).

    The first is the crop scale that would reproduce the FERPlus framing around this box:
    margin = (scale - 1) / 2.
    """
    side = truth[2] - truth[0]
    dx = ((face.x0 + face.x1) - (truth[0] + truth[2])) / 2 / side
    dy = ((face.y0 + face.y1) - (truth[1] + truth[3])) / 2 / side
    return side / max(face.width, face.height), dx, dy, face.height / face.width


def read_scene(
    recognizer: ExpressionRecognizer, scene: Scene, margins: tuple[float, ...] = ()
) -> Reading:
    """The recognizer on the whole scene; the prediction for the pasted face, if found.

    `margins`: also crop the found face with each of these margins (for choosing the margin
    from measurements; the recognizer's own margin gives `label`).
    """
    predictions = recognizer(scene.image)
    hits = [p for p in predictions if matches(p.box, scene.truth)]
    if not hits:
        return Reading(False, false_alarms=len(predictions))
    best = max(hits, key=lambda p: p.detector_score or 0.0)
    face = Face(*best.box, best.detector_score, best.landmarks)
    crops = [recognizer.prepare(scene.image, boxes=[face.box], margin=m) for m in margins]
    return Reading(
        True,
        label=recognizer.classes.index(best.label),
        false_alarms=len(predictions) - 1,
        geometry=box_geometry(face, scene.truth),
        crops=crops,
    )
