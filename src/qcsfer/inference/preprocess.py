"""Face crops -> model input, exactly as in training, from the model's saved preprocessing.

Training decodes each face with PIL (converted to L for gray models, resized to `load_size` with
bilinear filtering) into uint8, then `qcsfer.data.transforms.eval_transform` centre-crops to
`image_size` and normalises. Inference does the same two steps: `to_load_size` here is the
decoding step, and the backends run either `eval_transform` itself (torch) or `numpy_eval_transform`
(ONNX, no torch), which a test checks against it to 1e-5.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image

FIELDS = ("image_size", "load_size", "grayscale", "mean", "std")


@dataclass(frozen=True)
class InputSpec:
    """Torch-free copy of a model's complete `Preprocessing` (all five fields, no defaults)."""

    image_size: int
    load_size: int
    grayscale: bool
    mean: tuple[float, float, float]
    std: tuple[float, float, float]

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> InputSpec:
        """From a complete preprocessing dict (as embedded in exported models)."""
        missing = [k for k in FIELDS if k not in data]
        if missing:
            raise ValueError(f"preprocessing metadata lacks {missing}")
        spec = cls(
            image_size=int(data["image_size"]),
            load_size=int(data["load_size"]),
            grayscale=bool(data["grayscale"]),
            mean=tuple(float(v) for v in data["mean"]),  # type: ignore[arg-type]
            std=tuple(float(v) for v in data["std"]),  # type: ignore[arg-type]
        )
        if spec.load_size < spec.image_size or spec.image_size < 1:
            raise ValueError(f"invalid sizes: load_size {spec.load_size}, image {spec.image_size}")
        if len(spec.mean) != 3 or len(spec.std) != 3 or min(spec.std) <= 0:
            raise ValueError("mean and std need three values each, std > 0")
        return spec

    def to_dict(self) -> dict[str, Any]:
        return {
            "image_size": self.image_size,
            "load_size": self.load_size,
            "grayscale": self.grayscale,
            "mean": list(self.mean),
            "std": list(self.std),
        }

    @property
    def channels(self) -> int:
        """Channels of the uint8 batch before normalisation (gray is repeated to 3 later)."""
        return 1 if self.grayscale else 3


def to_load_size(crop: np.ndarray, spec: InputSpec) -> np.ndarray:
    """An RGB uint8 face crop -> C x L x L uint8, the way training decodes its images."""
    image = Image.fromarray(np.ascontiguousarray(crop), "RGB")
    if spec.grayscale:
        image = image.convert("L")
    if image.size != (spec.load_size, spec.load_size):
        image = image.resize((spec.load_size, spec.load_size), Image.BILINEAR, reducing_gap=3.0)
    array = np.asarray(image, dtype=np.uint8)
    return array[None] if array.ndim == 2 else array.transpose(2, 0, 1)


def stack_crops(crops: Sequence[np.ndarray], spec: InputSpec) -> np.ndarray:
    """RGB face crops -> uint8 B x C x L x L."""
    shape = (len(crops), spec.channels, spec.load_size, spec.load_size)
    batch = np.empty(shape, dtype=np.uint8)
    for i, crop in enumerate(crops):
        batch[i] = to_load_size(crop, spec)
    return batch


def numpy_eval_transform(batch: np.ndarray, spec: InputSpec) -> np.ndarray:
    """uint8 B x c x L x L -> float32 B x 3 x S x S: the numpy twin of `eval_transform`."""
    if batch.ndim != 4 or batch.shape[-1] != spec.load_size or batch.shape[-2] != spec.load_size:
        raise ValueError(
            f"expected a B x C x {spec.load_size} x {spec.load_size} batch, got {batch.shape}"
        )
    x = batch.astype(np.float32) / np.float32(255)
    start = (spec.load_size - spec.image_size) // 2
    x = x[..., start : start + spec.image_size, start : start + spec.image_size]
    if x.shape[1] != 3:
        x = np.broadcast_to(x, (x.shape[0], 3, *x.shape[2:]))
    mean = np.asarray(spec.mean, dtype=np.float32).reshape(1, 3, 1, 1)
    std = np.asarray(spec.std, dtype=np.float32).reshape(1, 3, 1, 1)
    return np.ascontiguousarray((x - mean) / std, dtype=np.float32)
