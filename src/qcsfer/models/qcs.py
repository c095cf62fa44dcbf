"""The training model: branches through the shared base network, CSA, cross ViT, and the loss.

Branches are numbered 0 anchor, 1 positive, 2 negative, 3 negative2 (the paper's 1-4). QCS
pairs them around the circle 1 -S- 2 -D- 4 -S- 3 -D- 1 with four pair matrices (D21, D43, D31,
D42), each read by both of its images; DCS is the anchor-positive pair alone.
"""

from __future__ import annotations

import dataclasses
from typing import Literal, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ConfigError
from .base import BaseNetwork
from .configs import ModelConfig
from .csa import CrossSimilarityAttention, Pair
from .vit import ViT

Mode = Literal["baseline", "dcs", "qcs"]

ANCHOR, POSITIVE, NEGATIVE, NEGATIVE2 = range(4)

TOPOLOGY: dict[str, tuple[Pair, ...]] = {
    "qcs": (
        Pair(POSITIVE, ANCHOR, "S"),  # S21
        Pair(NEGATIVE2, NEGATIVE, "S"),  # S43
        Pair(NEGATIVE, ANCHOR, "D"),  # D31
        Pair(NEGATIVE2, POSITIVE, "D"),  # D42
    ),
    "dcs": (Pair(POSITIVE, ANCHOR, "S"),),
    "baseline": (),
}

BRANCHES: dict[str, int] = {"baseline": 1, "dcs": 2, "qcs": 4}


class BranchLogits(NamedTuple):
    base: torch.Tensor  # G x B x K
    cross: torch.Tensor | None  # G x B x K, None for the baseline


class QCSModel(nn.Module):
    """Base network plus, for DCS/QCS, the per-scale CSA modules and the cross ViT."""

    def __init__(self, config: ModelConfig, mode: Mode = "qcs") -> None:
        super().__init__()
        if mode not in TOPOLOGY:
            raise ConfigError(f"unknown mode {mode!r}; choose from {sorted(TOPOLOGY)}")
        self.config = config
        self.mode = mode
        self.pairs = TOPOLOGY[mode]
        self.base = BaseNetwork(config)
        if mode != "baseline":
            csa_config = config.csa
            if mode == "dcs":  # DCS has only the same-class pair: S terms only, no k
                csa_config = dataclasses.replace(csa_config, variant="S")
            self.csa = nn.ModuleList(
                CrossSimilarityAttention(config.dim, config.mlp_ratio, csa_config) for _ in range(3)
            )
            self.cross_vit = ViT.for_config(config, config.cross_depth, config.cross_dropout)

    @property
    def branches(self) -> int:
        return BRANCHES[self.mode]

    def forward(self, images: torch.Tensor) -> BranchLogits:
        """images: G x B x C x H x W, branch-major. All G*B images go through the base in one call.

        BatchNorm in training mode therefore normalises over all G*B images of the step (one
        larger batch) instead of per branch as sequential calls would; in eval mode the two are
        identical. `config.bn_per_branch` makes the G calls of the reference instead (slower).
        """
        g, b = images.shape[:2]
        if g != self.branches:
            raise ValueError(f"{self.mode} expects {self.branches} branches, got {g}")
        if self.config.bn_per_branch and self.training:
            features = torch.stack([self.base.forward_features(branch) for branch in images])
            base_logits = torch.stack([self.base.forward_head(branch) for branch in features])
        else:
            features = self.base.forward_features(images.flatten(0, 1))
            base_logits = self.base.forward_head(features).unflatten(0, (g, b))
            features = features.unflatten(0, (g, b))
        tokens = features[:, :, 1:]  # the class token is the base classifier's alone
        if self.mode == "baseline":
            return BranchLogits(base_logits, None)
        return BranchLogits(base_logits, self.cross_logits(tokens))

    def cross_logits(self, tokens: torch.Tensor) -> torch.Tensor:
        """Base tokens of the G branches (G x B x 3N x C) -> cross classifier logits (G x B x K).

        Each scale is refined by its CSA module over the branch pairs, added back to the base
        tokens (the residual through which the cross losses reach the base network).
        """
        scales = tokens.split(self.config.tokens_per_scale, dim=2)
        refined = torch.cat(
            [csa(s, self.pairs) for csa, s in zip(self.csa, scales, strict=True)], dim=2
        )
        logits = self.cross_vit((tokens + refined).flatten(0, 1))
        return logits.unflatten(0, tokens.shape[:2])

    def k_values(self) -> list[float]:
        """The learned k = 1 + tanh(gamma * theta) of each scale (empty where there is none)."""
        if self.mode == "baseline":
            return []
        return [float(csa.k.detach()) for csa in self.csa if csa.theta is not None]


def branch_loss(
    logits: BranchLogits, targets: torch.Tensor, keep: torch.Tensor | None = None
) -> torch.Tensor:
    """Mean of the CE terms: base and cross logits of every branch against its own target.

    targets: G x B class ids, or G x B x K probabilities (FERPlus probability mode). With equal
    batch sizes per term, the mean of the 2G per-term means is the mean over all of them.
    keep (B, bool): examples to count; the others (an unreadable image) are left out.
    """
    heads = [logits.base] if logits.cross is None else [logits.base, logits.cross]
    terms = torch.stack(
        [
            F.cross_entropy(h.flatten(0, 1).float(), targets.flatten(0, 1), reduction="none")
            for h in heads
        ]
    ).unflatten(1, logits.base.shape[:2])  # heads x G x B
    if keep is None:
        return terms.mean()
    weight = keep.to(terms.dtype).expand_as(terms)
    return (terms * weight).sum() / weight.sum().clamp(min=1)
