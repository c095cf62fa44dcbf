"""A small generated folder dataset, so the engine is tested where no real faces are at hand.

Each class is a different pattern (horizontal stripes, vertical stripes, a bright disc, a dark
disc) at a random phase or place, under noise: easy to learn, but only from the pixels.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

CLASSES = ("anger", "happiness", "neutral", "sadness")


def pattern(label: int, size: int, rng: np.random.Generator) -> np.ndarray:
    """One size x size uint8 grayscale image of class `label`."""
    y, x = np.mgrid[0:size, 0:size].astype(np.float32)
    if label in (0, 1):
        along = y if label == 0 else x
        signal = 60 * np.sign(np.sin(2 * np.pi * (along / 8 + rng.random())))
    else:
        cy, cx = rng.uniform(size * 0.35, size * 0.65, 2)
        disc = (y - cy) ** 2 + (x - cx) ** 2 < (size / 4) ** 2
        signal = (70 if label == 2 else -70) * disc
    image = 128 + signal + rng.normal(0, 20, (size, size))
    return np.clip(image, 0, 255).astype(np.uint8)


def write_folder_dataset(
    root: Path, per_class: dict[str, int], size: int = 48, seed: int = 0
) -> Path:
    """root/<split>/<class>/<n>.png for each split and its images per class; returns root."""
    rng = np.random.default_rng(seed)
    for split, count in per_class.items():
        for label, name in enumerate(CLASSES):
            folder = root / split / name
            folder.mkdir(parents=True)
            for n in range(count):
                Image.fromarray(pattern(label, size, rng)).save(folder / f"{n:03d}.png")
    return root
