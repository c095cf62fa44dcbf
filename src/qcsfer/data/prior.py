"""The training class prior: what a model learns besides the expressions.

One definition for the two places that need it: the logit-adjusted loss during training and
the decision rule fitted afterwards (tools/calibrate.py), so that the prior a model was trained
against is the prior its operating points correct for.
"""

from __future__ import annotations

import numpy as np

from ..config import TrainConfig
from .datasets import read_dataset
from .records import LabeledImages
from .sources import read_source


def class_prior(records: LabeledImages, weights: np.ndarray | None = None) -> np.ndarray:
    """The class distribution of the training targets (soft labels where there are any), each
    image weighted as the sampler draws it."""
    if records.soft_labels is not None:
        targets = records.soft_labels.astype(np.float64)
    else:
        targets = np.eye(records.num_classes)[records.labels]
    if weights is not None:
        targets = targets * np.asarray(weights, dtype=np.float64)[:, None]
    total = targets.sum(0)
    return total / total.sum()


def training_prior(config: TrainConfig) -> np.ndarray:
    """`class_prior` of the training data a recorded configuration names, read from its labels
    only (every source with its sampling weight)."""
    data = config.data
    main = read_dataset(data.format, data.root, data.train_split, **data.options)
    parts = [(class_prior(main), 1.0, len(main))]
    for source in data.sources:
        records, _ = read_source(source, main.classes, config.seed)
        parts.append((class_prior(records), source.weight, len(records)))
    total = sum(prior * weight * n for prior, weight, n in parts)
    return total / total.sum()
