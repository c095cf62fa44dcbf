"""Face crops -> model input, exactly as in training, from the model's saved `Preprocessing`.

Training decodes each face into uint8 at `load_size` (`qcsfer.imaging.square_chw`: gray for
gray models, bilinear resize), then `qcsfer.data.transforms.eval_transform` centre-crops to
`image_size` and normalises. Inference does the same two steps: `stack_crops` here is the
decoding step, and the backends run either `eval_transform` itself (torch) or its numpy twin
`numpy_eval_transform` (ONNX, no torch), which a test checks against it to 1e-5.

`FaceBatch` is one image's faces at that point, and `in_batches` groups images or frames so
their faces share model calls.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import TypeVar

import numpy as np

from ..errors import UsageError
from ..imaging import square_chw
from ..preprocessing import Preprocessing
from .faces import Face

T = TypeVar("T")


def stack_crops(crops: Sequence[np.ndarray], prep: Preprocessing) -> np.ndarray:
    """RGB uint8 face crops -> uint8 B x C x L x L, decoded the way training decodes faces."""
    batch = np.empty((len(crops), prep.channels, prep.load_size, prep.load_size), dtype=np.uint8)
    for i, crop in enumerate(crops):
        batch[i] = square_chw(crop, prep.load_size, prep.grayscale)
    return batch


def numpy_eval_transform(batch: np.ndarray, prep: Preprocessing) -> np.ndarray:
    """uint8 B x c x L x L -> float32 B x 3 x S x S: the numpy twin of `eval_transform`."""
    if batch.ndim != 4 or batch.shape[-1] != prep.load_size or batch.shape[-2] != prep.load_size:
        raise UsageError(
            f"expected a B x C x {prep.load_size} x {prep.load_size} batch, got {batch.shape}"
        )
    x = batch.astype(np.float32) / np.float32(255)
    start = (prep.load_size - prep.image_size) // 2
    x = x[..., start : start + prep.image_size, start : start + prep.image_size]
    if x.shape[1] != 3:
        x = np.broadcast_to(x, (x.shape[0], 3, *x.shape[2:]))
    mean = np.asarray(prep.mean, dtype=np.float32).reshape(1, 3, 1, 1)
    std = np.asarray(prep.std, dtype=np.float32).reshape(1, 3, 1, 1)
    return np.ascontiguousarray((x - mean) / std, dtype=np.float32)


@dataclass(frozen=True)
class FaceBatch:
    """One image's faces as the model will read them: the unit every caller of the recognizer
    (photos, video frames, server uploads, explain) hands to `ExpressionRecognizer.classify`."""

    faces: list[Face]
    inputs: np.ndarray  # uint8 F x C x L x L (`stack_crops` of the crops)
    width: int  # of the image the faces are in
    height: int
    crops: list[np.ndarray] = field(default_factory=list, repr=False)  # RGB, only when kept

    def __len__(self) -> int:
        return len(self.faces)


def in_batches(
    items: Iterable[T], faces: Callable[[T], int], size: int, most: int | None = None
) -> Iterator[list[T]]:
    """Consecutive groups of `items` holding at least `size` faces (or `most` items), the last
    group what remains: faces of several images or frames share one model call, and results
    still come out in input order, one group at a time (memory stays flat on long streams)."""
    group: list[T] = []
    waiting = 0
    for item in items:
        group.append(item)
        waiting += faces(item)
        if waiting >= size or (most is not None and len(group) >= most):
            yield group
            group, waiting = [], 0
    if group:
        yield group
