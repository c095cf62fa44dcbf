"""The small ViT used twice in QCS: the base classifier and the cross classifier.

Class token + learned position embedding, pre-norm blocks, final LayerNorm; the class token is
gated by a squeeze-excitation block before the linear head. Parameter names follow the
reference so its checkpoints map one-to-one.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ConfigError
from .configs import ModelConfig


class Attention(nn.Module):
    """Multi-head self-attention. Two paths with the same maths, chosen once, not per call:
    the explicit softmax(q k^T / sqrt(d)) v (on CPU it trains ~5x faster than the fused
    kernel's backward, and exports to plain ONNX ops) or PyTorch's fused kernel (`fused=True`,
    for CUDA; `use_fused_attention` switches a built model)."""

    def __init__(self, dim: int, heads: int, dropout: float, fused: bool = False) -> None:
        super().__init__()
        if dim % heads:
            raise ConfigError(f"dim {dim} is not divisible by heads {heads}")
        self.heads = heads
        self.fused = fused
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(dropout)

    def _qkv(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        return self.qkv(x).view(b, n, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)

    @staticmethod
    def _weights(q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
        return (q @ k.transpose(-1, -2) * q.shape[-1] ** -0.5).softmax(dim=-1)

    def attention_weights(self, x: torch.Tensor) -> torch.Tensor:
        """softmax(q k^T / sqrt(d)) for input x (B x N x C): B x heads x N x N (for `explain`)."""
        q, k, _ = self._qkv(x)
        return self._weights(q, k)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        q, k, v = self._qkv(x)
        x = F.scaled_dot_product_attention(q, k, v) if self.fused else self._weights(q, k) @ v
        return self.proj_drop(self.proj(x.transpose(1, 2).reshape(b, n, c)))


def use_fused_attention(model: nn.Module, fused: bool) -> nn.Module:
    """Choose every attention layer's path for the device the model will run on (fused on CUDA)."""
    for module in model.modules():
        if isinstance(module, Attention):
            module.fused = fused
    return model


class MLP(nn.Module):
    def __init__(self, dim: int, hidden: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop(self.fc2(self.drop(F.gelu(self.fc1(x)))))


class Block(nn.Module):
    def __init__(
        self, dim: int, heads: int, mlp_ratio: float, dropout: float, proj_dropout: float
    ) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = Attention(dim, heads, proj_dropout)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = MLP(dim, int(dim * mlp_ratio), dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class SEGate(nn.Module):
    """Squeeze-excitation on the class token: x * sigmoid(W2 relu(W1 x))."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.linear1 = nn.Linear(dim, dim)
        self.linear2 = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(self.linear2(F.relu(self.linear1(x))))


class ViT(nn.Module):
    """Tokens (B x N x C) -> logits B x K. As in timm, `forward_features` gives the normalised
    tokens (class token first) and `forward_head` the logits from them."""

    def __init__(
        self,
        num_tokens: int,
        dim: int,
        depth: int,
        heads: int,
        mlp_ratio: float,
        num_classes: int,
        dropout: float = 0.0,
        attn_proj_dropout: bool = False,
    ) -> None:
        super().__init__()
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, num_tokens + 1, dim))
        self.pos_drop = nn.Dropout(dropout)
        proj_dropout = dropout if attn_proj_dropout else 0.0
        self.blocks = nn.Sequential(
            *[Block(dim, heads, mlp_ratio, dropout, proj_dropout) for _ in range(depth)]
        )
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.se_block = SEGate(dim)
        self.head = nn.Linear(dim, num_classes)
        self.reset_parameters()

    @classmethod
    def for_config(cls, config: ModelConfig, depth: int, dropout: float) -> ViT:
        """The base or cross ViT of a configuration (they differ in depth and dropout only)."""
        return cls(
            num_tokens=config.num_tokens,
            dim=config.dim,
            depth=depth,
            heads=config.heads,
            mlp_ratio=config.mlp_ratio,
            num_classes=config.num_classes,
            dropout=dropout,
            attn_proj_dropout=config.attn_proj_dropout,
        )

    def reset_parameters(self) -> None:
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        nn.init.trunc_normal_(self.cls_token, std=0.02)
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.trunc_normal_(module.weight, std=0.01)
                nn.init.zeros_(module.bias)
            elif isinstance(module, nn.LayerNorm):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)

    def forward_features(self, tokens: torch.Tensor) -> torch.Tensor:
        """Tokens B x N x C -> B x (1 + N) x C after the final LayerNorm, class token first."""
        cls = self.cls_token.expand(tokens.shape[0], -1, -1)
        x = self.pos_drop(torch.cat([cls, tokens], dim=1) + self.pos_embed)
        return self.norm(self.blocks(x))

    def forward_head(self, features: torch.Tensor) -> torch.Tensor:
        """`forward_features`' output -> logits B x K, from the class token."""
        return self.head(self.se_block(features[:, 0]))

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(tokens))
