"""The IR backbone (ArcFace "IR" units), stages 1-3 only, returning the three stage maps.

IR-50 is units (3, 4, 14) at widths (64, 128, 256); smaller networks for CPU use the same code
with fewer units and narrower widths.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from ..errors import ConfigError


class Subsample(nn.Module):
    """Keep every `stride`-th pixel: what a 1x1 max-pool with that stride computes, cheaper."""

    def __init__(self, stride: int) -> None:
        super().__init__()
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x[:, :, :: self.stride, :: self.stride] if self.stride > 1 else x


class IRUnit(nn.Module):
    """residual = BN -> conv3x3 -> PReLU -> conv3x3(stride) -> BN; plus a (projected) shortcut."""

    def __init__(self, in_channels: int, out_channels: int, stride: int) -> None:
        super().__init__()
        if in_channels == out_channels:
            # Identity subsampled by the stride (the reference's 1x1 max-pool).
            self.shortcut: nn.Module = Subsample(stride)
        else:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride, bias=False),
                nn.BatchNorm2d(out_channels),
            )
        self.residual = nn.Sequential(
            nn.BatchNorm2d(in_channels),
            nn.Conv2d(in_channels, out_channels, 3, 1, 1, bias=False),
            nn.PReLU(out_channels),
            nn.Conv2d(out_channels, out_channels, 3, stride, 1, bias=False),
            nn.BatchNorm2d(out_channels),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.residual(x) + self.shortcut(x)


class IRBackbone(nn.Module):
    """Stem (conv3x3 + BN + PReLU at full resolution) and three stride-2 stages."""

    def __init__(self, units: Sequence[int], widths: Sequence[int], in_channels: int = 3) -> None:
        super().__init__()
        if len(units) != 3 or len(widths) != 3:
            raise ConfigError(f"IRBackbone needs 3 stages, got units={units} widths={widths}")
        self.widths = tuple(widths)
        self.stem = nn.Sequential(
            nn.Conv2d(in_channels, widths[0], 3, 1, 1, bias=False),
            nn.BatchNorm2d(widths[0]),
            nn.PReLU(widths[0]),
        )
        stages = []
        previous = widths[0]
        for n_units, width in zip(units, widths, strict=True):
            blocks = [IRUnit(previous, width, stride=2)]
            blocks += [IRUnit(width, width, stride=1) for _ in range(n_units - 1)]
            stages.append(nn.Sequential(*blocks))
            previous = width
        self.stages = nn.ModuleList(stages)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = self.stem(x)
        maps = []
        for stage in self.stages:
            x = stage(x)
            maps.append(x)
        return maps
