"""The training and validation splits of a run, and their images batch by batch.

A split's pixels live in memory (decoded once, cached on disk) or are decoded from disk per
batch, with the next batch decoded in a background thread while the current one trains.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from ..errors import TrainingError
from ..preprocessing import Preprocessing
from .datasets import read_dataset, stratified_split
from .detected_faces import load_detected_faces
from .images import DiskImages, MemoryImages, default_cache_dir, load_images
from .records import LabeledImages
from .sampling import Batches
from .sources import combine, read_source

if TYPE_CHECKING:  # config builds on data's settings; data reads a config only when given one
    from ..config import TrainConfig
    from ..inference.faces import Detector

log = logging.getLogger("qcsfer.train")

MEMORY_LIMIT_GB = 8.0  # storage "auto": hold a split in memory below this decoded size


@dataclass
class Split:
    """Records of a split and where their pixels come from (memory, or disk batch by batch)."""

    records: LabeledImages
    images: MemoryImages | DiskImages
    skipped_at_load: int = 0  # unreadable images removed before training (memory storage)
    weights: np.ndarray | None = None  # anchor sampling weight per image (several sources)

    @property
    def skipped(self) -> int:
        return self.skipped_at_load + getattr(self.images, "skipped", 0)

    @classmethod
    def load(
        cls,
        records: LabeledImages,
        prep: Preprocessing,
        storage: str,
        cache_dir: Path | None,
        framing: float = 1.0,
        detector: str | Detector | None = None,  # whole photos cut by this face detector
    ) -> Split:
        size_gb = len(records) * prep.channels * prep.load_size**2 / 1e9
        on_disk = storage == "disk" or (storage == "auto" and size_gb > MEMORY_LIMIT_GB)
        if on_disk and detector is None:  # detected faces are cut once, then held in memory
            log.info(
                "%s/%s: decoding from disk per batch (%.1f GB decoded)",
                records.name,
                records.split,
                size_gb,
            )
            images = DiskImages(records.paths, prep.load_size, prep.grayscale, framing=framing)
            return cls(records, images)
        if detector is not None:
            label = f"{records.name}/{records.split}"
            store = load_detected_faces(records.paths, prep, detector, cache_dir, framing, label)
        else:
            store = load_images(
                records.paths, prep.load_size, prep.grayscale, cache_dir, framing=framing
            )
        if store.skipped:
            log.warning(
                "%s/%s: skipped %d unreadable images", records.name, records.split, store.skipped
            )
            keep = np.flatnonzero(store.valid)
            images = MemoryImages(store.images[torch.from_numpy(keep)])
            return cls(records.subset(keep), images, store.skipped)
        return cls(records, MemoryImages(store.images))

    @classmethod
    def combine(cls, parts: list[Split], weights: list[float]) -> Split:
        """One training split from several sources held in memory, each image weighted."""
        if not all(isinstance(p.images, MemoryImages) for p in parts):
            raise TrainingError("training on several sources needs data.storage: memory")
        return cls(
            combine([p.records for p in parts]),
            MemoryImages(torch.cat([p.images.images for p in parts])),
            sum(p.skipped_at_load for p in parts),
            np.concatenate(
                [np.full(len(p.records), w) for p, w in zip(parts, weights, strict=True)]
            ),
        )

    def targets(self, indices: np.ndarray) -> torch.Tensor:
        """Class ids, or vote distributions where the split has soft labels."""
        if self.records.soft_labels is not None:
            return torch.from_numpy(self.records.soft_labels[indices])
        return torch.from_numpy(self.records.labels[indices])


def read_main_records(config: TrainConfig) -> tuple[LabeledImages, LabeledImages]:
    """The main dataset's training and validation records (validation carved from training
    where none is named; training limited to data.limit), before any image is read."""
    data = config.data
    train = read_dataset(data.format, data.root, data.train_split, **data.options)
    if data.val_split is None:
        train, val = stratified_split(train, data.val_fraction, config.seed)
    else:
        val_options = data.options if data.val_options is None else data.val_options
        val = read_dataset(data.format, data.root, data.val_split, **val_options)
    if data.limit is not None:
        rng = np.random.default_rng(config.seed)
        train = train.subset(np.sort(rng.permutation(len(train))[: data.limit]))
    return train, val


def load_splits(config: TrainConfig, run_dir: Path | None) -> tuple[Split, Split, dict[str, Split]]:
    """Training split (every source combined), validation split, held-out source slices.

    A validation split carved from training is recorded in run_dir/validation_split.json
    (when run_dir is given)."""
    data = config.data
    train, val = read_main_records(config)
    if data.val_split is None and run_dir is not None:
        record = {
            "validation_carved_from": data.train_split,
            "fraction": data.val_fraction,
            "seed": config.seed,
            "paths": [str(p) for p in val.paths],
        }
        (run_dir / "validation_split.json").write_text(json.dumps(record))
    train.check_classes()
    for split in (train, val):
        for reason, count in split.notes.items():
            log.info("%s/%s: %d rows %s", split.name, split.split, count, reason)
    if val.classes != train.classes:
        raise TrainingError(f"train classes {train.classes} differ from validation {val.classes}")
    cache = (
        None
        if data.cache_dir is None
        else (default_cache_dir() if data.cache_dir == "default" else Path(data.cache_dir))
    )
    if not len(val):
        raise TrainingError(f"{val.name}/{val.split}: the validation split has no images")
    storage = data.storage
    train_split = Split.load(train, config.preprocessing, storage, cache)
    val_split = Split.load(val, config.preprocessing, storage, cache)
    if not len(val_split.records):
        raise TrainingError(
            f"{val.name}/{val.split}: no readable images in the validation split "
            f"(all {len(val)} unreadable): nothing to select the best model on"
        )
    train_split.records.check_classes()  # again: a class may have lost all its images
    if not data.sources:
        return train_split, val_split, {}
    parts, held_out = [train_split], {}
    for source in data.sources:
        records, slice_ = read_source(source, train.classes, config.seed)
        for reason, count in records.notes.items():
            log.info("source %s: %d rows %s", source.label, count, reason)
        framing = source.framing, source.detector
        parts.append(Split.load(records, config.preprocessing, storage, cache, *framing))
        if slice_ is not None:
            held_out[source.label] = Split.load(
                slice_, config.preprocessing, storage, cache, *framing
            )
    combined = Split.combine(parts, [1.0] + [s.weight for s in data.sources])
    combined.records.check_classes()
    return combined, val_split, held_out


def iterate_batches(
    source: MemoryImages | DiskImages, batches: Batches, start: int, stop: int | None = None
) -> Iterator[tuple[int, torch.Tensor, np.ndarray]]:
    """(batch number, uint8 images, validity) for batches start..stop-1; from disk, the next
    batch is decoded in a background thread while the current one trains."""
    stop = len(batches) if stop is None else min(stop, len(batches))
    if isinstance(source, MemoryImages):
        for b in range(start, stop):
            yield (b, *source.load(batches[b].reshape(-1)))
        return
    with ThreadPoolExecutor(1) as prefetch:
        upcoming = None
        for b in range(start, stop):
            current = upcoming or prefetch.submit(source.load, batches[b].reshape(-1))
            if b + 1 < stop:
                upcoming = prefetch.submit(source.load, batches[b + 1].reshape(-1))
            yield (b, *current.result())
