"""The base network: IR backbone -> three scales of tokens -> base ViT. The inference network."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ConfigError
from .backbone import IRBackbone
from .configs import ModelConfig
from .mobilenet import MobileNetV1
from .vit import ViT


class ScaleTokens(nn.Module):
    """One scale: stage map (c x s x s) -> grid x grid tokens of `dim` channels.

    The map is halved until it reaches the grid: the first halving is a channel-keeping
    "downsample" conv, the rest are conv3x3 stride 2 (the first one widening to `dim`); when no
    halving is left for the embedding a conv1x1 does the widening. For the paper this gives
    exactly the reference: conv1 + embed_q (2 convs), conv2 + embed_k (1 conv), conv3 + embed_v
    (1x1).
    """

    def __init__(self, channels: int, size: int, grid: int, dim: int) -> None:
        super().__init__()
        steps = math.log2(size / grid) if size >= grid else -1
        if steps < 0 or steps != int(steps):
            raise ConfigError(f"a {size}x{size} map cannot be halved to a {grid}x{grid} token grid")
        steps = int(steps)
        self.downsample = nn.Conv2d(channels, channels, 3, 2, 1) if steps else nn.Identity()
        convs: list[nn.Module] = []
        width = channels
        for _ in range(max(steps - 1, 0)):
            convs.append(nn.Conv2d(width, dim, 3, 2, 1))
            width = dim
        if not convs:
            convs.append(nn.Conv2d(channels, dim, 1))
        self.embed = nn.Sequential(*convs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.embed(self.downsample(x)).flatten(2).transpose(1, 2)


def build_backbone(config: ModelConfig) -> nn.Module:
    """The network that yields the three stage maps: IR stages 1-3 or MobileNet-v1."""
    if config.backbone == "mobilenet":
        if tuple(config.widths) != MobileNetV1.widths:
            raise ConfigError(f"the mobilenet backbone's widths are {MobileNetV1.widths}")
        return MobileNetV1(config.in_channels, frozen_norm=config.frozen_backbone_norm)
    return IRBackbone(config.units, config.widths, config.in_channels)


class BaseNetwork(nn.Module):
    """images (B x C x H x W) -> logits B x K; `forward_features` / `forward_head` (as in timm)
    give the tokens too. Shared by every branch of the training topologies."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        self.backbone = build_backbone(config)
        self.tokens = nn.ModuleList(
            ScaleTokens(c, s, config.token_grid, config.dim)
            for c, s in zip(config.widths, config.stage_sizes(), strict=True)
        )
        self.vit = ViT.for_config(config, config.base_depth, config.base_dropout)

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        """Backbone and token embedding: B x 3N x dim, scales 1, 2, 3 in order."""
        if (
            images.shape[-1] != self.config.backbone_size
            or images.shape[-2] != self.config.backbone_size
        ):
            images = F.interpolate(images, size=self.config.backbone_size, mode="nearest")
        maps = self.backbone(images)
        return torch.cat([embed(m) for embed, m in zip(self.tokens, maps, strict=True)], dim=1)

    def forward_features(self, images: torch.Tensor) -> torch.Tensor:
        """Images -> B x (1 + 3N) x dim: the class token, then the tokens of scales 1, 2, 3,
        after the base ViT's final LayerNorm (what the CSA modules of QCS read)."""
        return self.vit.forward_features(self.embed(images))

    def forward_head(self, features: torch.Tensor) -> torch.Tensor:
        """`forward_features`' output -> logits B x K."""
        return self.vit.forward_head(features)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Images -> logits: the inference network (exported as it is)."""
        return self.forward_head(self.forward_features(images))
