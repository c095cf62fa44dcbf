"""Reading images, for training and inference alike (torch-free: the ONNX backend needs no torch).

One set of rules for every image that enters qcsfer, whether a dataset file, a photo to
predict on, a PIL image or a numpy array (a video frame):

- decompression bombs are refused from the header, before any pixel is decoded;
- EXIF orientation of files is applied;
- any PIL mode becomes L or RGB: 16-bit and float images are scaled to 8 bits, CMYK and
  palettes are converted, alpha is composited on white;
- unusable input raises ImageError, whose message names the input and says why.

`square_chw` then resizes a face to the model's load size as uint8 C x S x S, the same way for
training (the decoded-image store) and inference (face crops).
"""

from __future__ import annotations

import io
import os
import stat
from collections.abc import Sequence
from typing import Literal, TypeAlias

import numpy as np
from PIL import Image, ImageOps

from .errors import ImageError, UsageError

# Refuse images with more pixels than this. `open_image` checks the header itself, before
# decoding, so PIL's global guard (Image.MAX_IMAGE_PIXELS, which only raises above twice its
# limit and merely warns in between) is left at PIL's default rather than changed at import.
MAX_PIXELS = 64_000_000

# File suffixes taken as images (dataset folders, `qcsfer predict` folders, CSV header sniffing).
IMAGE_SUFFIXES = frozenset(
    {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".pbm"}
)

Color = Literal["rgb", "bgr"]
ImageInput: TypeAlias = "str | os.PathLike[str] | Image.Image | np.ndarray"


class ImageTooLarge(ImageError):
    """An image with more pixels than allowed (a decompression-bomb guard); told apart so that a
    server can answer 413."""


def to_supported_mode(image: Image.Image, grayscale: bool = False) -> Image.Image:
    """Any PIL mode (16-bit, float, CMYK, palette, alpha, ...) -> 'L' or 'RGB'.

    An image already in the wanted mode is returned as it is (not copied).
    """
    target = "L" if grayscale else "RGB"
    if image.mode == target:
        return image
    if image.mode in ("I;16", "I;16B", "I;16L", "I"):
        array = np.asarray(image, dtype=np.float64)
        peak = 65535.0 if image.mode.startswith("I;16") or array.max() > 255 else 255.0
        image = Image.fromarray(np.clip(np.rint(array / peak * 255.0), 0, 255).astype(np.uint8))
    elif image.mode == "F":
        array = np.asarray(image, dtype=np.float64)
        scaled = np.rint(array * (255.0 if array.max() <= 1 else 1.0))  # round, not truncate
        image = Image.fromarray(np.clip(scaled, 0, 255).astype(np.uint8))
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        image = Image.alpha_composite(background, rgba)
    return image.convert(target)


def _check_file(name: str) -> None:
    """Clear messages for what is not an image file at all (one stat call)."""
    try:
        info = os.stat(name)
    except FileNotFoundError:
        raise ImageError(f"{name}: no such file") from None
    except OSError as exc:
        raise ImageError(f"{name}: cannot read image ({exc})") from exc
    if stat.S_ISDIR(info.st_mode):
        raise ImageError(f"{name}: is a folder, not an image")
    if info.st_size == 0:
        raise ImageError(f"{name}: empty file (0 bytes)")


def open_image(path: str | os.PathLike[str], grayscale: bool = False) -> Image.Image:
    """A file as an L/RGB PIL image with EXIF orientation applied; ImageError says why not."""
    name = os.fspath(path)
    _check_file(name)
    return _decode(name, name, grayscale, MAX_PIXELS, None)


def decode_image(
    data: bytes,
    name: str,
    *,
    max_pixels: int = MAX_PIXELS,
    formats: Sequence[str] | None = None,
) -> Image.Image:
    """Encoded bytes (an upload) as an RGB PIL image, decoded in memory like `open_image`.

    formats: the PIL format names accepted (None: any PIL can read).
    """
    if not data:
        raise ImageError(f"{name}: empty file (0 bytes)")
    return _decode(io.BytesIO(data), name, False, max_pixels, formats)


def _decode(
    source: str | io.BytesIO,
    name: str,
    grayscale: bool,
    max_pixels: int,
    formats: Sequence[str] | None,
) -> Image.Image:
    try:
        with Image.open(source, formats=formats) as image:
            pixels = image.width * image.height  # from the header: nothing decoded yet
            if pixels > max_pixels:
                raise ImageTooLarge(f"{name}: image too large ({pixels} pixels > {max_pixels})")
            image = ImageOps.exif_transpose(image)
            image.load()
            return to_supported_mode(image, grayscale)
    except ImageError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        # The warning arrives as an exception when warnings are errors (python -W error).
        raise ImageTooLarge(f"{name}: image too large ({exc})") from exc
    except Image.UnidentifiedImageError:  # PIL's message names a BytesIO object for uploads
        raise ImageError(f"{name}: cannot read image (not an image format PIL knows)") from None
    except (OSError, SyntaxError, ValueError) as exc:  # PIL's errors for unreadable data
        raise ImageError(f"{name}: cannot read image ({exc})") from exc


def read_image(path: str | os.PathLike[str], grayscale: bool = False) -> np.ndarray:
    """A file as an H x W x 3 RGB (or H x W gray) uint8 array; ImageError says why not."""
    return np.asarray(open_image(path, grayscale), dtype=np.uint8)


def _array_to_rgb(array: np.ndarray, color: Color, name: str) -> np.ndarray:
    """H x W, H x W x 1/3/4 of uint8, uint16, bool or float in [0, 1] -> RGB uint8."""
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
        rgba = Image.fromarray(np.ascontiguousarray(array), "RGBA")
        return np.asarray(to_supported_mode(rgba), dtype=np.uint8)
    return np.ascontiguousarray(array)


def to_rgb_array(image: ImageInput, color: Color = "rgb") -> np.ndarray:
    """Path, PIL image or numpy array -> H x W x 3 RGB uint8 array.

    Files go through `open_image` (EXIF orientation, size guard). A PIL image is taken as it
    is: it is already decoded, and whether its orientation was applied is the caller's
    business. `color` says how a 3/4-channel numpy array is ordered ("bgr" for OpenCV frames);
    it does not apply to files or PIL images, whose colour order is known.
    """
    if color not in ("rgb", "bgr"):
        raise UsageError(f"color must be 'rgb' or 'bgr', got {color!r}")
    if isinstance(image, str | os.PathLike):
        return read_image(image)
    if isinstance(image, Image.Image):
        if image.width < 1 or image.height < 1:
            raise ImageError("PIL image: empty image")
        try:
            return np.asarray(to_supported_mode(image), dtype=np.uint8)
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


def square_chw(image: Image.Image | np.ndarray, size: int, grayscale: bool) -> np.ndarray:
    """A PIL image or an RGB uint8 array -> L/RGB resized to size x size, as uint8 C x S x S.

    Bilinear with `reducing_gap=3.0` whatever the aspect ratio: how the training store decodes
    its faces, and so how inference must prepare its crops.
    """
    if isinstance(image, np.ndarray):
        image = Image.fromarray(np.ascontiguousarray(image), "RGB")
    image = to_supported_mode(image, grayscale)
    if image.size != (size, size):
        image = image.resize((size, size), Image.BILINEAR, reducing_gap=3.0)
    array = np.asarray(image, dtype=np.uint8)
    return array[None] if array.ndim == 2 else array.transpose(2, 0, 1)
