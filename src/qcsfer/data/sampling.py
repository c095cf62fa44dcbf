"""Which images form each training example: plain (anchor), pair (DCS) or quadruplet (QCS).

For each anchor of class y: positive = another image of y; negative = an image of a class
y_n != y, chosen by the `frequency` rule (a random image among all other classes: RAF-DB and
FERPlus) or the `uniform-class` rule (a uniform class, then an image: AffectNet); negative2 =
another image of y_n. Images are kept sorted by class, so every draw is O(1) arithmetic on a
class index, vectorised over the whole epoch.

An epoch is a pure function of (seed, epoch): a resumed run re-creates it and skips the
batches already done. Under data parallelism each rank takes a disjoint shard of the anchors.
Anchors that do not fill a last batch are dropped, unless `drop_last: false`: the reference's
DataLoaders keep that smaller last batch (one process only, as the reference ran).

A class with a single image cannot give a different image of its class: its positive (or
negative2) is then the image itself, with a warning naming the class.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Literal

import numpy as np

from ..errors import ConfigError, DatasetError, UsageError

log = logging.getLogger(__name__)

NegativeRule = Literal["frequency", "uniform-class"]
# One epoch's batches: an array (batches x branches x batch_size), or with `drop_last: false`
# and anchors left over, a list of (branches x n) arrays whose last one is shorter.
Batches = np.ndarray | list[np.ndarray]


@dataclass(frozen=True)
class SamplerConfig:
    """How anchors and partners are drawn (the number of branches comes from the mode)."""

    negative_rule: NegativeRule = "frequency"
    balanced: bool = False  # draw anchors with weights 1/class count, with replacement
    # (per-image source weights, where several datasets are combined, multiply these)
    anchors_per_epoch: int | None = None  # default: epoch_fraction x the dataset size
    # AffectNet's QCS reference draws len/12; its DCS scripts' imbalanced.py draws len
    epoch_fraction: float = 1.0
    drop_last: bool = True  # false: train the leftover anchors as a smaller last batch

    def __post_init__(self) -> None:
        anchors = self.anchors_per_epoch
        if anchors is not None and anchors < 1:
            raise ConfigError(f"sampler.anchors_per_epoch must be >= 1, got {anchors}")
        if not self.epoch_fraction > 0:
            raise ConfigError(f"sampler.epoch_fraction must be positive, got {self.epoch_fraction}")


class BranchSampler:
    """Yields, per epoch, index arrays of shape (batches, branches, batch_size) for one rank."""

    def __init__(
        self,
        labels: np.ndarray,
        branches: int,
        batch_size: int,
        config: SamplerConfig | None = None,
        *,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        class_names: tuple[str, ...] | None = None,
        weights: np.ndarray | None = None,
    ) -> None:
        if branches not in (1, 2, 4):
            raise UsageError(f"branches must be 1, 2 or 4, got {branches}")
        if batch_size < 1:
            raise UsageError(f"batch size must be at least 1, got {batch_size}")
        if not 0 <= rank < world_size:
            raise UsageError(f"rank {rank} is not in 0..{world_size - 1}")
        if world_size > 1 and config is not None and not config.drop_last:
            raise ConfigError(
                "sampler.drop_last: false (the reference's smaller last batch) runs in one "
                "process; under data parallelism set sampler.drop_last=true"
            )
        self.labels = np.asarray(labels, dtype=np.int64)
        if self.labels.size == 0:
            raise DatasetError("cannot sample from an empty dataset")
        if weights is not None and (weights.shape != self.labels.shape or not (weights > 0).all()):
            raise UsageError("sampling weights must be positive, one per image")
        self.weights = weights  # relative anchor probability of each image (None: equal)
        self.config = config or SamplerConfig()
        self.branches, self.batch_size, self.seed = branches, batch_size, seed
        self.rank, self.world_size = rank, world_size

        num_classes = int(self.labels.max()) + 1 if class_names is None else len(class_names)
        self.order = np.argsort(self.labels, kind="stable")  # images sorted by class
        self.count = np.bincount(self.labels, minlength=num_classes)
        self.start = np.concatenate([[0], np.cumsum(self.count)[:-1]])
        self.slot = np.empty_like(self.order)  # each image's position within its class
        self.slot[self.order] = np.arange(len(self.order)) - self.start[self.labels[self.order]]
        self.nonempty = np.flatnonzero(self.count)

        if branches == 4 and len(self.nonempty) < 2:
            raise DatasetError("quadruplets need at least two classes with images")
        if branches > 1:
            names = class_names or tuple(str(c) for c in range(num_classes))
            for c in np.flatnonzero(self.count == 1):
                log.warning(
                    "class %r has a single image: it serves as its own positive/negative2", names[c]
                )

    @property
    def anchors_per_epoch(self) -> int:
        return self.config.anchors_per_epoch or round(self.config.epoch_fraction * len(self.labels))

    def __len__(self) -> int:
        """Batches per epoch for each rank (with an incomplete last one unless drop_last)."""
        full, rest = divmod(self.anchors_per_epoch, self.batch_size * self.world_size)
        return full + int(rest > 0 and not self.config.drop_last)

    def epoch(self, epoch: int) -> Batches:
        rng = np.random.default_rng([self.seed, epoch])
        anchors = self._anchors(rng)
        columns = [anchors]
        if self.branches >= 2:
            columns.append(self._other_of_same_class(anchors, rng))
        if self.branches == 4:
            negatives = self._negatives(anchors, rng)
            columns += [negatives, self._other_of_same_class(negatives, rng)]
        table = np.stack(columns)  # branches x anchors
        batches = self.anchors_per_epoch // (self.batch_size * self.world_size)
        used = batches * self.batch_size * self.world_size
        full = table[:, :used].reshape(self.branches, batches, self.world_size, self.batch_size)
        full = np.ascontiguousarray(full[:, :, self.rank].transpose(1, 0, 2))
        if self.config.drop_last or used == table.shape[1]:
            return full
        return [*full, np.ascontiguousarray(table[:, used:])]  # one process: no sharding

    def _anchors(self, rng: np.random.Generator) -> np.ndarray:
        n = len(self.labels)
        if not self.config.balanced and self.weights is None:
            if self.anchors_per_epoch <= n:
                return rng.permutation(n)[: self.anchors_per_epoch]
            return rng.integers(0, n, self.anchors_per_epoch)
        weights = np.ones(n) if self.weights is None else self.weights.astype(np.float64)
        if self.config.balanced:
            weights = weights / self.count[self.labels]
        return rng.choice(n, size=self.anchors_per_epoch, replace=True, p=weights / weights.sum())

    def _other_of_same_class(self, images: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """A different image of the same class (the image itself for a one-image class)."""
        classes = self.labels[images]
        count = self.count[classes]
        r = np.floor(rng.random(len(images)) * np.maximum(count - 1, 1)).astype(np.int64)
        r += (r >= self.slot[images]) & (count > 1)  # skip the image's own slot
        return self.order[self.start[classes] + np.minimum(r, count - 1)]

    def _negatives(self, anchors: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        classes = self.labels[anchors]
        if self.config.negative_rule == "frequency":
            # A uniform position among the images outside the anchor's class.
            outside = len(self.labels) - self.count[classes]
            r = np.floor(rng.random(len(anchors)) * outside).astype(np.int64)
            r += np.where(r >= self.start[classes], self.count[classes], 0)
            return self.order[r]
        if self.config.negative_rule == "uniform-class":
            position = np.searchsorted(self.nonempty, classes)
            r = np.floor(rng.random(len(anchors)) * (len(self.nonempty) - 1)).astype(np.int64)
            negative_class = self.nonempty[r + (r >= position)]
            pick = np.floor(rng.random(len(anchors)) * self.count[negative_class]).astype(np.int64)
            return self.order[self.start[negative_class] + pick]
        raise ConfigError(f"unknown negative rule {self.config.negative_rule!r}")
