"""Logit adjustment in training (Menon et al., ICLR 2021): a prior-aware objective.

The loss sees logits + tau x log(training prior), so the network's own logits only have to
explain what the prior does not: with tau = 1 they estimate the class-balanced posterior, and
the rare classes (FERPlus disgust and contempt, under 1% each) get a larger margin than plain
cross-entropy gives them. The decision rule (tools/calibrate.py) puts the prior back for the
`dataset` operating point, with a strength fitted on Valid (about -tau).
"""

from __future__ import annotations

import logging

import numpy as np
import torch

from ..data.prior import class_prior
from ..data.records import LabeledImages
from ..models.qcs import BranchLogits
from .step import LossFunction

log = logging.getLogger("qcsfer.train")


def prior_offset(
    records: LabeledImages, weights: np.ndarray | None, tau: float, announce: bool = True
) -> torch.Tensor | None:
    """tau x log(training prior), the shift the loss adds to every head's logits (None when
    tau is 0: plain cross-entropy)."""
    if not tau:
        return None
    prior = class_prior(records, weights)
    if announce:
        named = dict(zip(records.classes, prior.round(4).tolist(), strict=True))
        log.info("logit adjustment, tau %g, training prior %s", tau, named)
    return tau * torch.log(torch.as_tensor(prior, dtype=torch.float32))


def logit_adjusted(loss: LossFunction, offset: torch.Tensor) -> LossFunction:
    """`loss` applied to logits shifted by `offset` (base and cross heads alike; `offset` on
    the logits' device)."""

    def adjusted(
        logits: BranchLogits, targets: torch.Tensor, keep: torch.Tensor | None = None
    ) -> torch.Tensor:
        cross = None if logits.cross is None else logits.cross + offset
        return loss(BranchLogits(logits.base + offset, cross), targets, keep)

    return adjusted
