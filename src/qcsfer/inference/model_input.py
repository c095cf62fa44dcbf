"""Face crops -> model input, exactly as in training, from the model's saved `Preprocessing`.

Training decodes each face into uint8 at `load_size` (`qcsfer.imaging.square_chw`: gray for
gray models, bilinear resize), then `qcsfer.data.transforms.eval_transform` centre-crops to
`image_size` and normalises. Inference does the same two steps: `stack_crops` here is the
decoding step, and the backends run either `eval_transform` itself (torch) or its numpy twin
`numpy_eval_transform` (ONNX, no torch), which a test checks against it to 1e-5.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ..imaging import square_chw
from ..preprocessing import Preprocessing


def stack_crops(crops: Sequence[np.ndarray], prep: Preprocessing) -> np.ndarray:
    """RGB uint8 face crops -> uint8 B x C x L x L, decoded the way training decodes faces."""
    batch = np.empty((len(crops), prep.channels, prep.load_size, prep.load_size), dtype=np.uint8)
    for i, crop in enumerate(crops):
        batch[i] = square_chw(crop, prep.load_size, prep.grayscale)
    return batch


def numpy_eval_transform(batch: np.ndarray, prep: Preprocessing) -> np.ndarray:
    """uint8 B x c x L x L -> float32 B x 3 x S x S: the numpy twin of `eval_transform`."""
    if batch.ndim != 4 or batch.shape[-1] != prep.load_size or batch.shape[-2] != prep.load_size:
        raise ValueError(
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
