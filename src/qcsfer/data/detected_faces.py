"""Training faces cut from whole photos the way `qcsfer predict` cuts them.

A source of head-and-shoulders photos (tcce) is shown to the model at inference through a face
detector: the largest face it finds, squared and widened by the detector's margin
(`inference.faces.crop_face`), then decoded like any face (`inference.model_input.stack_crops`).
Training on a fixed centred square instead teaches the model a framing it never sees again (a
model trained on tcce's centred 0.7 read its dev photos 9 points worse through MTCNN than
centred). So such a source goes through the same detector and the same crop here, once, cached
like any decoded store. A photo with no face found falls back to the source's centred framing,
counted and logged, never dropped silently.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ..imaging import ImageError, read_image
from ..inference.detectors import make_detector
from ..inference.faces import Detector, Face, crop_face
from ..inference.model_input import stack_crops
from ..preprocessing import Preprocessing
from .images import ImageStore, cached_store

log = logging.getLogger(__name__)


def centred_face(width: int, height: int, framing: float) -> Face:
    """The centred square of `framing` x the shorter side, as a face box."""
    side = max(1, round(min(width, height) * framing))
    x0, y0 = (width - side) // 2, (height - side) // 2
    return Face(x0, y0, x0 + side, y0 + side)


def load_detected_faces(
    paths: Sequence[Path],
    prep: Preprocessing,
    detector: str | Detector,
    cache_dir: Path | None,
    fallback_framing: float = 1.0,
    label: str = "source",
) -> ImageStore:
    """Each photo's largest detected face, cropped as predict crops it (see the module doc)."""
    finder = make_detector(detector) if isinstance(detector, str) else detector
    margin = float(getattr(finder, "margin", 0.0))
    framing = f"detector={finder.name}:margin={margin:g}:fallback={fallback_framing:g}"

    def decode_all() -> tuple[np.ndarray, np.ndarray]:
        channels = 1 if prep.grayscale else 3
        images = np.zeros((len(paths), channels, prep.load_size, prep.load_size), np.uint8)
        valid = np.zeros(len(paths), dtype=bool)
        missed = 0
        for i, path in enumerate(paths):
            try:
                rgb = read_image(path)
            except ImageError as exc:
                log.warning("skipping %s", exc)
                continue
            faces = finder.detect(rgb)
            if faces:
                face, face_margin = max(faces, key=lambda f: f.width * f.height), margin
            else:
                missed += 1
                face = centred_face(rgb.shape[1], rgb.shape[0], fallback_framing)
                face_margin = 0.0
            images[i] = stack_crops([crop_face(rgb, face, face_margin)], prep)[0]
            valid[i] = True
        if missed:
            log.warning(
                "%s: %s found no face in %d of %d photos; those keep the centred %g framing",
                label,
                finder.name,
                missed,
                len(paths),
                fallback_framing,
            )
        return images, valid

    return cached_store(paths, prep.load_size, prep.grayscale, cache_dir, framing, decode_all)
