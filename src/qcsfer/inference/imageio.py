"""Torch-free image input for inference: files, PIL images and numpy arrays -> RGB uint8 arrays.

The ONNX backend must run where torch is not installed, so this module cannot import
`qcsfer.data.images` (which imports torch for its training store). `read_image` follows
`qcsfer.data.images.open_image` rule for rule (EXIF orientation, decompression-bomb guard,
16-bit / float / CMYK / palette / alpha handling); tests/test_inference.py checks the two agree
pixel for pixel so they cannot drift apart unnoticed.
"""

from __future__ import annotations

import os
from typing import Literal, TypeAlias

import numpy as np
from PIL import Image, ImageOps

# The same limit as qcsfer.data.images.MAX_PIXELS (a test keeps them equal).
MAX_PIXELS = 64_000_000

Color = Literal["rgb", "bgr"]
ImageInput: TypeAlias = "str | os.PathLike[str] | Image.Image | np.ndarray"


class ImageError(ValueError):
    """An input that cannot be used as an image; the message names it and says why."""


def _supported(image: Image.Image) -> Image.Image:
    """Any PIL mode -> RGB, with the training reader's rules (alpha composited on white)."""
    if image.mode in ("I;16", "I;16B", "I;16L", "I"):
        array = np.asarray(image, dtype=np.float64)
        peak = 65535.0 if image.mode.startswith("I;16") or array.max() > 255 else 255.0
        image = Image.fromarray(np.clip(np.rint(array / peak * 255.0), 0, 255).astype(np.uint8))
    elif image.mode == "F":
        array = np.asarray(image, dtype=np.float64)
        scaled = np.rint(array * (255.0 if array.max() <= 1 else 1.0))
        image = Image.fromarray(np.clip(scaled, 0, 255).astype(np.uint8))
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        image = Image.alpha_composite(background, rgba)
    return image.convert("RGB")


def read_image(path: str | os.PathLike[str]) -> np.ndarray:
    """A file as an H x W x 3 RGB uint8 array; ImageError says why it cannot be read."""
    name = os.fspath(path)
    if not os.path.exists(name):
        raise ImageError(f"{name}: no such file")
    if os.path.isdir(name):
        raise ImageError(f"{name}: is a folder, not an image")
    if os.path.getsize(name) == 0:
        raise ImageError(f"{name}: empty file (0 bytes)")
    try:
        with Image.open(name) as image:
            pixels = image.width * image.height  # from the header: nothing decoded yet
            if pixels > MAX_PIXELS:
                raise ImageError(f"{name}: image too large ({pixels} pixels > {MAX_PIXELS})")
            image = ImageOps.exif_transpose(image)
            image.load()
            return np.asarray(_supported(image), dtype=np.uint8)
    except ImageError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageError(f"{name}: image too large ({exc})") from exc
    except (OSError, SyntaxError, ValueError) as exc:  # PIL's errors for unreadable data
        raise ImageError(f"{name}: cannot read image ({exc})") from exc


def _array_to_rgb(array: np.ndarray, color: Color, name: str) -> np.ndarray:
    """H x W, H x W x 1/3/4 of uint8, uint16 or float in [0, 1] -> RGB uint8 (BGR swapped)."""
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[:, :, 0]
    if array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[2] not in (3, 4)):
        raise ImageError(f"{name}: expected H x W or H x W x 1/3/4, got shape {array.shape}")
    if array.shape[0] < 1 or array.shape[1] < 1:
        raise ImageError(f"{name}: empty image (shape {array.shape})")
    if array.dtype == np.uint8:
        pass
    elif array.dtype == np.uint16:
        array = np.rint(array.astype(np.float64) / 65535.0 * 255.0).astype(np.uint8)
    elif np.issubdtype(array.dtype, np.floating):
        if not np.isfinite(array).all():
            raise ImageError(f"{name}: float image with NaN or infinite values")
        array = np.clip(np.rint(array.astype(np.float64) * 255.0), 0, 255).astype(np.uint8)
    elif array.dtype == np.bool_:
        array = array.astype(np.uint8) * 255
    else:
        raise ImageError(f"{name}: unsupported dtype {array.dtype} (use uint8, uint16 or float)")
    if array.ndim == 2:
        return np.repeat(array[:, :, None], 3, axis=2)
    if color == "bgr":
        array = array[:, :, [2, 1, 0, 3][: array.shape[2]]]
    if array.shape[2] == 4:
        return np.asarray(_supported(Image.fromarray(np.ascontiguousarray(array), "RGBA")))
    return np.ascontiguousarray(array)


def to_rgb_array(image: ImageInput, color: Color = "rgb") -> np.ndarray:
    """Path, PIL image or numpy array -> H x W x 3 RGB uint8 array.

    `color` says how a 3/4-channel numpy array is ordered ("bgr" for OpenCV frames); it does
    not apply to files or PIL images, whose colour order is known.
    """
    if color not in ("rgb", "bgr"):
        raise ValueError(f"color must be 'rgb' or 'bgr', got {color!r}")
    if isinstance(image, str | os.PathLike):
        return read_image(image)
    if isinstance(image, Image.Image):
        if image.width < 1 or image.height < 1:
            raise ImageError("PIL image: empty image")
        try:
            return np.asarray(_supported(image), dtype=np.uint8)
        except (OSError, ValueError) as exc:
            raise ImageError(f"PIL image in mode {image.mode}: cannot convert ({exc})") from exc
    if isinstance(image, np.ndarray):
        return _array_to_rgb(image, color, "array")
    raise TypeError(f"expected a path, PIL image or numpy array, got {type(image).__name__}")


def describe(image: ImageInput) -> str:
    """A short name for an input in results and messages."""
    if isinstance(image, str | os.PathLike):
        return os.fspath(image)
    if isinstance(image, Image.Image):
        return f"<PIL {image.mode} {image.width}x{image.height}>"
    if isinstance(image, np.ndarray):
        return f"<array {'x'.join(map(str, image.shape))} {image.dtype}>"
    return f"<{type(image).__name__}>"
