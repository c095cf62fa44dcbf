"""Safe image decoding and the in-memory image store used for training on small faces.

Decoding never crashes a long run: unreadable, truncated or oversized files are skipped and
counted. The store is a uint8 tensor (N x C x S x S) decoded once in parallel and cached on disk,
so epochs cost only the model, not PNG decoding.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps

log = logging.getLogger(__name__)

# Refuse decompression bombs. `open_image` checks this limit itself, before decoding: PIL's own
# guard only raises above twice its limit (and merely warns in between), and it would not see a
# later change of MAX_PIXELS. PIL's guard stays as a backstop.
MAX_PIXELS = 64_000_000
Image.MAX_IMAGE_PIXELS = MAX_PIXELS


class ImageError(ValueError):
    """An image that cannot be used; the message says which file and why."""


def to_supported_mode(image: Image.Image, grayscale: bool) -> Image.Image:
    """Any PIL mode (16-bit, CMYK, palette, alpha, ...) -> 'L' or 'RGB'."""
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
    return image.convert("L" if grayscale else "RGB")


def open_image(path: str | Path, grayscale: bool = False) -> Image.Image:
    """Open, respect EXIF orientation, convert to L/RGB. Raises ImageError with the reason."""
    try:
        with Image.open(path) as image:
            pixels = image.width * image.height  # from the header: nothing decoded yet
            if pixels > MAX_PIXELS:
                raise ImageError(f"{path}: image too large ({pixels} pixels > {MAX_PIXELS})")
            image = ImageOps.exif_transpose(image)
            image.load()
            return to_supported_mode(image, grayscale)
    except ImageError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        # The warning arrives as an exception when warnings are errors (python -W error).
        raise ImageError(f"{path}: image too large ({exc})") from exc
    except (OSError, SyntaxError, ValueError) as exc:  # PIL's errors for unreadable data
        raise ImageError(f"{path}: cannot read image ({exc})") from exc


def decode(path: Path, size: int, grayscale: bool) -> np.ndarray | None:
    """One image resized to size x size as uint8 C x S x S, or None if it is unusable."""
    try:
        image = open_image(path, grayscale)
    except ImageError as exc:
        log.warning("skipping %s", exc)
        return None
    if image.size != (size, size):
        image = image.resize((size, size), Image.BILINEAR, reducing_gap=3.0)
    array = np.asarray(image, dtype=np.uint8)
    return array[None] if array.ndim == 2 else array.transpose(2, 0, 1)


@dataclass
class ImageStore:
    """Decoded images of one split; `valid` marks the ones that could be read."""

    images: torch.Tensor  # uint8, N x C x S x S
    valid: np.ndarray  # bool, N

    @property
    def skipped(self) -> int:
        return int((~self.valid).sum())


def cache_key(paths: Sequence[Path], size: int, grayscale: bool) -> str:
    digest = hashlib.sha1(f"{size}:{grayscale}".encode())
    for p in paths:
        stat = p.stat() if p.exists() else None
        digest.update(
            f"{p}:{stat.st_size if stat else -1}:{stat.st_mtime_ns if stat else -1}\n".encode()
        )
    return digest.hexdigest()[:20]


def default_cache_dir() -> Path:
    return Path(os.environ.get("QCSFER_CACHE", Path.home() / ".cache" / "qcsfer"))


def _workers(workers: int | None) -> int:
    return workers or min(8, (os.cpu_count() or 2) * 2)


def decode_many(
    paths: Sequence[Path], size: int, grayscale: bool, pool: ThreadPoolExecutor
) -> tuple[np.ndarray, np.ndarray]:
    """Decode in parallel (PIL releases the GIL): uint8 N x C x S x S and a validity mask."""
    images = np.zeros((len(paths), 1 if grayscale else 3, size, size), dtype=np.uint8)
    valid = np.zeros(len(paths), dtype=bool)

    def work(i: int) -> None:
        array = decode(paths[i], size, grayscale)
        if array is not None:
            images[i], valid[i] = array, True

    list(pool.map(work, range(len(paths))))
    return images, valid


def load_images(
    paths: Sequence[Path],
    size: int,
    grayscale: bool,
    cache_dir: Path | None = None,
    workers: int | None = None,
) -> ImageStore:
    """Decode every image once, with an on-disk cache keyed by the files and the size."""
    cache_file = None
    if cache_dir is not None:
        cache_file = Path(cache_dir) / f"images-{cache_key(paths, size, grayscale)}.npz"
        if cache_file.is_file():
            with np.load(cache_file) as cached:
                return ImageStore(torch.from_numpy(cached["images"]), cached["valid"])

    with ThreadPoolExecutor(_workers(workers)) as pool:
        images, valid = decode_many(paths, size, grayscale, pool)
    if (~valid).any():
        log.warning("%d of %d images could not be read and are skipped", (~valid).sum(), len(paths))
    if cache_file is not None:
        cache_file.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache_file.with_suffix(f".tmp{os.getpid()}.npz")
        np.savez(tmp, images=images, valid=valid)
        os.replace(tmp, cache_file)
    return ImageStore(torch.from_numpy(images), valid)


class MemoryImages:
    """A split held in memory as one uint8 tensor (unreadable images already removed)."""

    def __init__(self, images: torch.Tensor) -> None:
        self.images = images

    def __len__(self) -> int:
        return len(self.images)

    def load(self, indices: np.ndarray) -> tuple[torch.Tensor, np.ndarray]:
        return self.images[torch.from_numpy(indices)], np.ones(len(indices), dtype=bool)


class DiskImages:
    """A split decoded batch by batch, for datasets too large to hold in memory (AffectNet).

    Unreadable files come back as zeros with valid=False: the trainer leaves their examples out
    of the loss and evaluation leaves them out of the metrics; `skipped` counts them.
    """

    def __init__(
        self, paths: Sequence[Path], size: int, grayscale: bool, workers: int | None = None
    ) -> None:
        self.paths, self.size, self.grayscale = list(paths), size, grayscale
        self.pool = ThreadPoolExecutor(_workers(workers))
        self.failed: set[int] = set()

    def __len__(self) -> int:
        return len(self.paths)

    @property
    def skipped(self) -> int:
        return len(self.failed)

    def load(self, indices: np.ndarray) -> tuple[torch.Tensor, np.ndarray]:
        images, valid = decode_many(
            [self.paths[i] for i in indices], self.size, self.grayscale, self.pool
        )
        self.failed.update(np.asarray(indices)[~valid].tolist())
        return torch.from_numpy(images), valid
