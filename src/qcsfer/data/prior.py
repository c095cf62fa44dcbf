"""The training class prior: what a model learns besides the expressions.

One definition for the two places that need it: the logit-adjusted loss during training and
the decision rule fitted afterwards (tools/calibrate.py), so that the prior a model was trained
against is the prior its operating points correct for.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from .records import LabeledImages
from .sources import read_source
from .splits import read_main_records

if TYPE_CHECKING:  # config builds on data's settings; data reads a config only when given one
    from ..config import TrainConfig


def class_prior(records: LabeledImages, weights: np.ndarray | None = None) -> np.ndarray:
    """The class distribution of the training targets (soft labels where there are any), each
    image weighted by its source's sampling weight: the prior of the anchors (and positives)
    the sampler draws. Negatives follow sampler.negative_rule; with sampler.balanced the
    anchors are class-uniform and no prior needs correcting (logit adjustment refuses it)."""
    if records.soft_labels is not None:
        targets = records.soft_labels.astype(np.float64)
    else:
        targets = np.eye(records.num_classes)[records.labels]
    if weights is not None:
        targets = targets * np.asarray(weights, dtype=np.float64)[:, None]
    total = targets.sum(0)
    return total / total.sum()


def training_prior(config: TrainConfig) -> np.ndarray:
    """`class_prior` of the training data a recorded configuration names, from its labels only:
    the same records `load_splits` trains on (carved validation, data.limit, every source with
    its sampling weight), before unreadable images are dropped."""
    main, _ = read_main_records(config)
    parts = [(class_prior(main), 1.0, len(main))]
    for source in config.data.sources:
        records, _ = read_source(source, main.classes, config.seed)
        parts.append((class_prior(records), source.weight, len(records)))
    total = sum(prior * weight * n for prior, weight, n in parts)
    return total / total.sum()
