"""The test images of benchmarks/detectors.py, made deterministically from shared/ (no
download): composed scenes with 1-4 faces (FERPlus validation faces and the astronaut's head,
60-300 px) pasted without overlap on plain, noise or photo backgrounds, the two shared photos,
and frames drawn as benchmarks/video.py draws its video; each with its true face boxes."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from face_matching import Box
from PIL import Image

from qcsfer.imaging import read_image

ROOT = Path(__file__).resolve().parents[1]

SHARED = ROOT.parent / "shared"
PHOTOS = SHARED / "photos"
FER_VALID = SHARED / "datasets" / "ferplus" / "FER2013Valid"
# The astronaut's head crop and the face box inside it (from the photo, alt2 detection).
HEAD = (150, 40, 298, 188)
HEAD_FACE = (28 / 148, 29 / 148, 120 / 148, 121 / 148)


@dataclass
class Scene:
    name: str
    image: np.ndarray  # RGB uint8
    faces: list[Box]  # true face boxes


def _paste_positions(
    rng: np.random.Generator, width: int, height: int, sides: list[int]
) -> list[tuple[int, int]] | None:
    placed: list[tuple[int, int, int]] = []
    for side in sides:
        for _ in range(200):
            x = int(rng.integers(0, width - side))
            y = int(rng.integers(0, height - side))
            if all(
                x + side + 10 < px or px + ps + 10 < x or y + side + 10 < py or py + ps + 10 < y
                for px, py, ps in placed
            ):
                placed.append((x, y, side))
                break
        else:
            return None
    return [(x, y) for x, y, _ in placed]


def make_scenes(count: int, seed: int = 0) -> list[Scene]:
    rng = np.random.default_rng(seed)
    fer = sorted(FER_VALID.glob("*.png"))[:400]
    if not fer:
        raise SystemExit(f"FERPlus validation faces not found in {FER_VALID}")
    astronaut = Image.open(PHOTOS / "astronaut.png").convert("RGB")
    head = astronaut.crop(HEAD)
    coffee = Image.open(PHOTOS / "coffee.png").convert("RGB")
    scenes = []
    for i in range(count):
        width, height = (
            (int(rng.integers(1800, 2600)), int(rng.integers(1400, 1900)))
            if i % 8 == 7
            else (int(rng.integers(500, 1280)), int(rng.integers(400, 960)))
        )
        kind = ("plain", "noise", "photo")[i % 3]
        if kind == "plain":
            canvas = np.empty((height, width, 3), np.uint8)
            canvas[:] = rng.integers(40, 220, 3)
        elif kind == "noise":
            small = rng.integers(0, 256, (height // 16 + 1, width // 16 + 1, 3), dtype=np.uint8)
            canvas = np.asarray(Image.fromarray(small).resize((width, height), Image.BILINEAR))
        else:
            canvas = np.asarray(coffee.resize((width, height), Image.BILINEAR))
        canvas = canvas.copy()
        n = int(rng.integers(1, 5))
        sides = [int(rng.integers(60, 300)) for _ in range(n)]
        positions = _paste_positions(rng, width, height, sides)
        if positions is None:
            continue
        truths: list[Box] = []
        for side, (x, y) in zip(sides, positions, strict=True):
            if rng.random() < 0.25:
                face = head.resize((side, side), Image.BICUBIC)
                a, b, c, d = HEAD_FACE
                truths.append((x + a * side, y + b * side, x + c * side, y + d * side))
            else:
                path = fer[int(rng.integers(0, len(fer)))]
                face = Image.open(path).convert("RGB").resize((side, side), Image.BICUBIC)
                truths.append((x, y, x + side, y + side))  # a FER crop ~ the face box
            canvas[y : y + side, x : x + side] = np.asarray(face)
        scenes.append(Scene(f"scene{i:02d}-{kind}-{width}x{height}", canvas, truths))
    scenes.append(
        Scene("astronaut.png", read_image(PHOTOS / "astronaut.png"), [(178, 69, 270, 161)])
    )
    scenes.append(Scene("coffee.png", read_image(PHOTOS / "coffee.png"), []))
    return scenes


def video_frames(count: int) -> list[Scene]:
    """Frames as benchmarks/video.py draws them (two astronaut heads, 140-260 px, crossing the
    coffee photo at 1280x720), `count` of them spread over ten minutes, with the true faces."""
    import video
    from video_truth import placements

    background = cv2.resize(video._photo("coffee"), video.SIZE, interpolation=cv2.INTER_AREA)
    x0, y0, x1, y1 = video.HEAD
    head = video._photo("astronaut")[y0:y1, x0:x1]
    face = np.array([178 - x0, 69 - y0, 270 - x0, 161 - y0]) / (x1 - x0)  # the face in the head
    mirrored = np.array([1 - face[2], face[1], 1 - face[0], face[3]])
    sprites = [(head, face), (np.ascontiguousarray(head[:, ::-1]), mirrored)]
    frames = []
    for i in range(count):
        frame, truths = background.copy(), []
        for (sprite, box), (x, y, side) in zip(sprites, placements(i, count / 600), strict=True):
            frame[y : y + side, x : x + side] = cv2.resize(sprite, (side, side), cv2.INTER_AREA)
            truths.append(tuple(float(v) for v in box * side + [x, y, x, y]))
        frames.append(Scene(f"frame{i}", cv2.cvtColor(frame, cv2.COLOR_BGR2RGB), truths))
    return frames
