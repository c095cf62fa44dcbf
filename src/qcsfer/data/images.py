"""Training images decoded in bulk: the in-memory store (cached on disk) and per-batch decoding.

Decoding (`qcsfer.imaging`) never crashes a long run: unreadable, truncated or oversized files
are skipped and counted. The store is a uint8 tensor (N x C x S x S) decoded once in parallel
and cached on disk, so epochs cost only the model, not PNG decoding; a cache file that does not
hold what is expected is ignored (logged) and rewritten. The cache is only ever a shortcut: a
cache folder that cannot be written (read-only, full) means decoding without one, with a
warning; QCSFER_CACHE=off turns it off.
"""

from __future__ import annotations

import hashlib
import logging
import os
import weakref
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

import numpy as np
import torch
from PIL import Image

from ..imaging import ImageError, open_image, square_chw
from ..io import atomic_write

log = logging.getLogger(__name__)


def decode(path: Path, size: int, grayscale: bool, framing: float = 1.0) -> np.ndarray | None:
    """One image resized to size x size as uint8 C x S x S, or None if it is unusable.

    `framing` re-frames the face before resizing: the centred square of `framing` times the
    shorter side (< 1 crops tighter, > 1 widens with replicated edges), so that sources
    cropped differently look like the faces the model sees at inference.
    """
    try:
        image = open_image(path, grayscale)
        if framing != 1.0:
            image = reframe(image, framing)
        return square_chw(image, size, grayscale)
    except ImageError as exc:
        log.warning("skipping %s", exc)
        return None


def reframe(image: Image.Image, framing: float) -> Image.Image:
    """The centred square of `framing` x the shorter side (edges replicated beyond the image)."""
    side = max(1, round(min(image.size) * framing))
    left, top = (image.width - side) // 2, (image.height - side) // 2
    if framing <= 1.0:
        return image.crop((left, top, left + side, top + side))
    array = np.asarray(image)
    pad_y, pad_x = max(0, -top), max(0, -left)
    widths = [(pad_y, side - image.height - pad_y), (pad_x, side - image.width - pad_x)]
    padded = np.pad(array, widths + [(0, 0)] * (array.ndim - 2), mode="edge")
    y, x = max(0, top), max(0, left)
    return Image.fromarray(padded[y : y + side, x : x + side])


@dataclass
class ImageStore:
    """Decoded images of one split; `valid` marks the ones that could be read."""

    images: torch.Tensor  # uint8, N x C x S x S
    valid: np.ndarray  # bool, N

    @property
    def skipped(self) -> int:
        return int((~self.valid).sum())


def cache_key(paths: Sequence[Path], size: int, grayscale: bool, framing: float | str = 1.0) -> str:
    """Names as the OS gives them (os.fsencode: bytes that are not UTF-8 are kept as they are)."""
    tag = f"{size}:{grayscale}" if framing == 1.0 else f"{size}:{grayscale}:{framing}"
    digest = hashlib.sha1(tag.encode())
    for p in paths:
        stat = p.stat() if p.exists() else None
        nbytes, mtime = (stat.st_size, stat.st_mtime_ns) if stat else (-1, -1)
        digest.update(os.fsencode(p) + f":{nbytes}:{mtime}\n".encode())
    return digest.hexdigest()[:20]


CACHE_OFF = frozenset({"off", "none", "no", "0", ""})


def default_cache_dir() -> Path | None:
    """$QCSFER_CACHE, else ~/.cache/qcsfer; None (no cache) when QCSFER_CACHE=off."""
    setting = os.environ.get("QCSFER_CACHE")
    if setting is not None and setting.strip().lower() in CACHE_OFF:
        return None
    return Path(setting) if setting is not None else Path.home() / ".cache" / "qcsfer"


def _workers(workers: int | None) -> int:
    return workers or min(8, (os.cpu_count() or 2) * 2)


def decode_many(
    paths: Sequence[Path],
    size: int,
    grayscale: bool,
    pool: ThreadPoolExecutor,
    framing: float = 1.0,
) -> tuple[np.ndarray, np.ndarray]:
    """Decode in parallel (PIL releases the GIL): uint8 N x C x S x S and a validity mask."""
    images = np.zeros((len(paths), 1 if grayscale else 3, size, size), dtype=np.uint8)
    valid = np.zeros(len(paths), dtype=bool)

    def work(i: int) -> None:
        array = decode(paths[i], size, grayscale, framing)
        if array is not None:
            images[i], valid[i] = array, True

    list(pool.map(work, range(len(paths))))
    return images, valid


def _read_cache(cache_file: Path, count: int, channels: int, size: int) -> ImageStore | None:
    """The cached store if it holds what is expected, else None (logged): decode again then."""
    expected = (count, channels, size, size)
    try:
        with np.load(cache_file) as cached:
            images, valid = cached["images"], cached["valid"]
    except Exception as exc:  # truncated or foreign file: zipfile, OSError, KeyError, ValueError
        log.warning("ignoring unreadable image cache %s (%s); decoding again", cache_file, exc)
        return None
    problem = None
    if images.dtype != np.uint8 or images.shape != expected:
        problem = f"images {images.dtype} {images.shape}, expected uint8 {expected}"
    elif valid.dtype != np.bool_ or valid.shape != (count,):
        problem = f"valid {valid.dtype} {valid.shape}, expected bool ({count},)"
    if problem is not None:
        log.warning("ignoring image cache %s (%s); decoding again", cache_file, problem)
        return None
    return ImageStore(torch.from_numpy(images), valid)


def load_images(
    paths: Sequence[Path],
    size: int,
    grayscale: bool,
    cache_dir: Path | None = None,
    workers: int | None = None,
    framing: float = 1.0,
) -> ImageStore:
    """Decode every image once, with an on-disk cache keyed by the files, size and framing."""

    def decode_all() -> tuple[np.ndarray, np.ndarray]:
        with ThreadPoolExecutor(_workers(workers)) as pool:
            return decode_many(paths, size, grayscale, pool, framing)

    return cached_store(paths, size, grayscale, cache_dir, framing, decode_all)


def cached_store(
    paths: Sequence[Path],
    size: int,
    grayscale: bool,
    cache_dir: Path | None,
    framing: float | str,
    decode_all: Callable[[], tuple[np.ndarray, np.ndarray]],
) -> ImageStore:
    """The store `decode_all` makes (uint8 images, validity), read from the cache when it holds
    it; `framing` names how the faces were framed, so that each framing has its own file."""
    cache_file = None
    if cache_dir is not None:
        key = cache_key(paths, size, grayscale, framing)
        cache_file = Path(cache_dir) / f"images-{key}.npz"
        if cache_file.is_file():
            store = _read_cache(cache_file, len(paths), 1 if grayscale else 3, size)
            if store is not None:
                return store

    images, valid = decode_all()
    if (~valid).any():
        log.warning("%d of %d images could not be read and are skipped", (~valid).sum(), len(paths))
    if cache_file is not None:

        def write(temporary: Path) -> None:
            with temporary.open("wb") as f:  # a file object: np.savez would add .npz to a name
                np.savez(f, images=images, valid=valid)

        try:
            atomic_write(cache_file, write)
        except OSError as exc:  # read-only, full, or a file where the folder should be
            log.warning(
                "image cache %s cannot be written (%s): continuing without a cache "
                "(QCSFER_CACHE=off turns it off, QCSFER_CACHE=FOLDER moves it)",
                cache_file.parent,
                exc.strerror or exc,
            )
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
    of the loss and evaluation leaves them out of the metrics; `skipped` counts them. The
    decoding threads stop on `close()` (or leaving a `with` block), at the latest when the
    object is garbage collected.
    """

    def __init__(
        self,
        paths: Sequence[Path],
        size: int,
        grayscale: bool,
        workers: int | None = None,
        framing: float = 1.0,
    ) -> None:
        self.paths, self.size, self.grayscale = list(paths), size, grayscale
        self.framing = framing
        self.pool = ThreadPoolExecutor(_workers(workers))
        self.failed: set[int] = set()
        self._shutdown = weakref.finalize(self, self.pool.shutdown, wait=False)

    def close(self) -> None:
        """Stop the decoding threads (idempotent)."""
        self._shutdown()

    def __enter__(self) -> DiskImages:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def __len__(self) -> int:
        return len(self.paths)

    @property
    def skipped(self) -> int:
        return len(self.failed)

    def load(self, indices: np.ndarray) -> tuple[torch.Tensor, np.ndarray]:
        paths = [self.paths[i] for i in indices]
        images, valid = decode_many(paths, self.size, self.grayscale, self.pool, self.framing)
        self.failed.update(np.asarray(indices)[~valid].tolist())
        return torch.from_numpy(images), valid
