"""Weight averaging of one run's checkpoints (stochastic weight averaging, Izmailov et al. 2018).

Weights saved along the low-learning-rate end of a run scatter around a wide minimum; their
mean usually generalises better than any one of them. BatchNorm running statistics belong to
the weights they were measured with, so after averaging they are measured again: one pass of
the training images (with the training augmentation) through the averaged network.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import nn

from ..data.images import MemoryImages
from ..data.splits import Split
from ..data.transforms import Augmentation, train_transform
from ..errors import UsageError, WeightsError
from ..preprocessing import Preprocessing
from .calibration import describe_points
from .device import autocast
from .evaluate import predict_logits


def average_states(
    states: Sequence[dict[str, torch.Tensor]], weights: Sequence[float] | None = None
) -> dict[str, torch.Tensor]:
    """Element-wise (weighted) mean of floating-point tensors; counters (integers) from the
    last state. Weights (summing to 1) interpolate, e.g. between a model and its fine-tuned
    version (WiSE-FT, Wortsman et al. 2022)."""
    if not states:
        raise UsageError("nothing to average")
    if weights is None:
        weights = [1 / len(states)] * len(states)
    if len(weights) != len(states) or abs(sum(weights) - 1) > 1e-6:
        raise UsageError("one weight per state, summing to 1")
    keys = states[0].keys()
    for state in states[1:]:
        if state.keys() != keys:
            raise WeightsError("the checkpoints hold different tensors: not from one model")
    averaged = {}
    for key, last in states[-1].items():
        if last.is_floating_point():
            mixed = sum(w * s[key].double() for w, s in zip(weights, states, strict=True))
            averaged[key] = mixed.to(last.dtype)
        else:
            averaged[key] = last.clone()
    return averaged


@torch.no_grad()
def recompute_batchnorm(
    network: nn.Module,
    images: MemoryImages,
    prep: Preprocessing,
    aug: Augmentation,
    *,
    seed: int = 0,
    batch_size: int = 256,
    precision: str = "fp32",
) -> int:
    """Re-measure every BatchNorm's running mean and variance over `images`; returns how many
    BatchNorm layers were reset. The statistics are exact averages over the whole pass
    (momentum None), not exponential ones."""
    norms = [m for m in network.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    momenta = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None
    was_training = network.training
    network.train()
    device = next(network.parameters()).device
    generator = torch.Generator(device).manual_seed(seed)
    order = torch.randperm(len(images), generator=torch.Generator().manual_seed(seed))
    for start in range(0, len(order), batch_size):
        batch, _ = images.load(order[start : start + batch_size].numpy())
        x = train_transform(batch.to(device), prep, aug, generator)
        with autocast(device, precision):
            network(x)
    for m, momentum in zip(norms, momenta, strict=True):
        m.momentum = momentum
    network.train(was_training)
    return len(norms)


def validation_logits(
    network: nn.Module, images: MemoryImages, prep: Preprocessing
) -> tuple[torch.Tensor, torch.Tensor]:
    """(single view, flip-averaged) logits in fp32 on CPU."""
    single, flip = (
        predict_logits(network, images.images, prep, torch.device("cpu"), flip=flip)
        for flip in (False, True)
    )
    return single, flip


def validation_summary(
    network: nn.Module, split: Split, prep: Preprocessing, log_prior: np.ndarray
) -> str:
    """How averaged or interpolated weights are compared, always on a validation split: the
    accuracy of the logits as they are (single view, flip) and the operating points the
    decision rule would fit on the flip-averaged ones (a logit-adjusted run needs its prior put
    back before its accuracy means anything)."""
    single, flip = validation_logits(network, split.images, prep)
    labels, classes = split.records.labels, split.records.classes
    as_is = [f"{100 * (v.argmax(1).numpy() == labels).mean():.2f}%" for v in (single, flip)]
    points = describe_points(flip.numpy(), labels, classes, log_prior)
    return f"Valid {as_is[0]} single view, {as_is[1]} flip; {points}"
