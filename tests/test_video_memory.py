"""Memory on long videos (issue 29): frames waiting for the model keep one copy of their pixels."""

from __future__ import annotations

import weakref
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from qcsfer.inference import ExpressionRecognizer
from qcsfer.inference.video.io import Sampled

from .test_inference import save_tiny
from .test_video import FPS, crossing_frames


def test_frames_waiting_for_the_model_do_not_keep_their_decoded_pixels(tmp_path: Path) -> None:
    """Up to `batch_frames` frames wait for one model call; each needs its RGB copy (for the
    annotated video), not the decoded BGR one too (2.7 MB more per waiting 720p frame)."""
    recognizer = ExpressionRecognizer(save_tiny(tmp_path / "tiny.safetensors"), detector="alt2")
    decoded: list[weakref.ref[np.ndarray]] = []

    pictures = crossing_frames(16)

    def frames() -> Iterator[Sampled]:
        for index, picture in enumerate(pictures):
            bgr = picture.copy()  # held by nothing but the Sampled (as a decoded frame)
            decoded.append(weakref.ref(bgr))
            yield Sampled(index, index / FPS, bgr)

    analysis = recognizer.video(tmp_path / "unused.avi", batch_frames=8, keep_images=True)
    analysis.reader = frames()  # type: ignore[assignment]  # any iterable of Sampled
    first = next(iter(analysis))  # out once the first 8 frames' faces are classified
    assert first.image is not None and first.predictions
    alive = [i for i, ref in enumerate(decoded) if ref() is not None]
    assert len(decoded) >= 8
    assert alive == [len(decoded) - 1]  # only the newest: the generator's current frame
