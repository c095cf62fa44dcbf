"""Cross Similarity Attention (method doc, section 3): one module per token scale.

Notation follows the paper: for a pair of images (i, j) the pairwise Euclidean distance matrix
between their query tokens is D_ij; a same-class pair turns it into a similarity S_ij; every
image gets a position score from each partner, S_i (similarity partner) and D_i (distance
partner), fused as softmax(S_i + k * D_i) with k = 1 + tanh(gamma * theta). The result gates the
image's own values position by position: nothing is mixed across positions or images.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from .configs import CSAConfig
from .vit import MLP

Relation = Literal["S", "D"]


@dataclass(frozen=True)
class Pair:
    """A pair matrix M = cdist(Q_row, Q_col): rows are `row`'s tokens, columns `col`'s.

    `relation` is "S" for a same-class pair (compared by similarity) and "D" for a
    different-class pair (compared by distance). Each matrix serves both images: `col` reads it
    as is, `row` reads it transposed.
    """

    row: int
    col: int
    relation: Relation


def position_scores(m: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Scores over each image's own positions from one pair matrix (... x N_row x N_col).

    For each partner token, L2-normalise its profile over the image's positions, then sum over
    the partner's tokens. Returns (score over col positions, score over row positions).
    """
    col_score = F.normalize(m, dim=-1).sum(dim=-2)
    row_score = F.normalize(m, dim=-2).sum(dim=-1)
    return col_score, row_score


class CrossSimilarityAttention(nn.Module):
    """Refines the tokens of G branches (G x B x N x C) given their pairings."""

    def __init__(self, dim: int, mlp_ratio: float, config: CSAConfig) -> None:
        super().__init__()
        self.config = config
        self.norm1 = nn.LayerNorm(dim)
        self.proj = nn.Linear(dim, 2 * dim)  # one projection -> [Q, V], no heads
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = MLP(dim, int(dim * mlp_ratio))
        # theta only exists where D terms are fused with S terms (k = 1 + tanh(gamma * theta)).
        self.theta = nn.Parameter(torch.zeros(())) if self.fuses_k else None

    @property
    def fuses_k(self) -> bool:
        return self.config.attention == "csa" and self.config.variant == "SD"

    @property
    def relations(self) -> tuple[Relation, ...]:
        return {"SD": ("S", "D"), "S": ("S",), "D": ("D",)}[self.config.variant]

    @property
    def k(self) -> torch.Tensor:
        if self.theta is None:
            raise AttributeError("k exists only for the SD variant")
        return 1 + torch.tanh(self.config.gamma * self.theta)

    def forward(self, x: torch.Tensor, pairs: Sequence[Pair]) -> torch.Tensor:
        h = self.norm1(x)
        q, v = self.proj(h).chunk(2, dim=-1)
        if self.config.attention == "sdpa":
            gated = self.cross_attention(q, v, pairs)
        else:
            gated = self.attention_map(q, pairs).unsqueeze(-1) * v
        if self.config.residual == "prenorm":  # a plain pre-norm block
            y = x + gated
            return y + self.mlp(self.norm2(y))
        z = self.norm2(h + gated)  # the residual runs through the LayerNorms
        return z + self.mlp(z)

    def position_maps(self, x: torch.Tensor, pairs: Sequence[Pair]) -> torch.Tensor:
        """The maps A_i that `forward` gates each image's values with, for its input x."""
        q, _ = self.proj(self.norm1(x)).chunk(2, dim=-1)
        return self.attention_map(q, pairs)

    def attention_map(self, q: torch.Tensor, pairs: Sequence[Pair]) -> torch.Tensor:
        """A_i = softmax over positions of (S_i + k D_i): G x B x N, sums to 1 over N."""
        pairs = [p for p in pairs if p.relation in self.relations]
        rows = torch.stack([q[p.row] for p in pairs])
        cols = torch.stack([q[p.col] for p in pairs])
        with torch.autocast(q.device.type, enabled=False):
            m = torch.cdist(rows.float(), cols.float())  # P x B x N_row x N_col
        # Shift to start at zero; min/max over the whole batch (reference) or per sample.
        dims = (1, 2, 3) if self.config.normalize == "batch" else (2, 3)
        m = m - m.amin(dim=dims, keepdim=True)
        is_similarity = torch.tensor([p.relation == "S" for p in pairs], device=m.device)
        m = torch.where(is_similarity.view(-1, 1, 1, 1), m.amax(dim=dims, keepdim=True) - m, m)
        col_scores, row_scores = position_scores(m)

        # Each image collects one score per relation from the matrices it takes part in.
        empty = torch.zeros(q.shape[1:-1], device=q.device)
        scores = {r: [empty] * q.shape[0] for r in self.relations}
        for p, col_score, row_score in zip(pairs, col_scores, row_scores, strict=True):
            scores[p.relation][p.col] = scores[p.relation][p.col] + col_score
            scores[p.relation][p.row] = scores[p.relation][p.row] + row_score
        if self.config.variant == "SD":
            logits = torch.stack(scores["S"]) + self.k * torch.stack(scores["D"])
        else:
            logits = torch.stack(scores[self.config.variant])
        return logits.softmax(dim=-1)

    def cross_attention(
        self, q: torch.Tensor, v: torch.Tensor, pairs: Sequence[Pair]
    ) -> torch.Tensor:
        """SDPA ablation: each image attends to its partners' values, averaged over partners."""
        pairs = [p for p in pairs if p.relation in self.relations]
        scale = 1 / math.sqrt(q.shape[-1])
        received: list[list[torch.Tensor]] = [[] for _ in range(q.shape[0])]
        for p in pairs:
            for me, other in ((p.row, p.col), (p.col, p.row)):
                attn = (q[me] @ q[other].transpose(-1, -2) * scale).softmax(dim=-1)
                received[me].append(attn @ v[other])
        return torch.stack(
            [torch.stack(r).mean(0) if r else torch.zeros_like(v[0]) for r in received]
        )
