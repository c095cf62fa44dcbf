"""The BlazeFace network (MediaPipe's short- and full-range face detectors) in plain PyTorch.

BlazeFace is a 5x5 stride-2 stem conv followed by "blaze blocks": a 3x3 depthwise conv and a 1x1
conv, added to the block's input (max-pooled where the block halves the resolution, zero-padded
with extra channels where it widens), then ReLU. Two heads read the map at two strides: a score
per anchor and 16 numbers per anchor (box centre and size, six keypoints).

The layout of a network is a `BlazeSpec`, read from the TF.js graph by `convert.py` and stored
with the weights, so the module is built to match the file. TensorFlow's SAME padding puts the
odd pixel below and to the right; it is written out explicitly here (PyTorch pads evenly).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ...tfjs import same_padding


@dataclass(frozen=True)
class Block:
    """Depthwise 3x3 (stride) + pointwise cin -> cout; residual=False: no skip (ReLU only)."""

    cin: int
    cout: int
    stride: int = 1
    residual: bool = True


@dataclass(frozen=True)
class Head:
    """Score and regression convs reading the output of block `after`; `anchors` per cell."""

    after: int
    channels: int
    anchors: int


@dataclass(frozen=True)
class BlazeSpec:
    size: int  # square input side the graph was exported for
    stem: int  # stem conv output channels
    blocks: tuple[Block, ...]
    heads: tuple[Head, ...]
    coords: int = 16  # numbers per anchor: box (4) + 6 keypoints (x, y)

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict) -> BlazeSpec:
        return cls(
            size=int(data["size"]),
            stem=int(data["stem"]),
            blocks=tuple(Block(**b) for b in data["blocks"]),
            heads=tuple(Head(**h) for h in data["heads"]),
            coords=int(data.get("coords", 16)),
        )


class BlazeBlock(nn.Module):
    def __init__(self, block: Block) -> None:
        super().__init__()
        self.stride, self.residual = block.stride, block.residual
        self.extra = block.cout - block.cin
        self.depthwise = nn.Conv2d(
            block.cin, block.cin, 3, block.stride, groups=block.cin, bias=False
        )
        self.pointwise = nn.Conv2d(block.cin, block.cout, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.pad(x, same_padding(x.shape[-2], x.shape[-1], 3, self.stride))
        h = self.pointwise(self.depthwise(h))
        if self.residual:
            skip = x
            if self.stride == 2:  # TF MaxPool 2x2 SAME: pads right/bottom on odd sides
                skip = F.max_pool2d(skip, 2, 2, ceil_mode=True)
            if self.extra:
                skip = F.pad(skip, (0, 0, 0, 0, 0, self.extra))
            h = h + skip
        return F.relu(h)


class BlazeFaceNet(nn.Module):
    """Raw outputs for N x 3 x size x size inputs in [-1, 1] (RGB).

    Returns (scores, regressors): N x A score logits and N x A x 16 regressions, anchors in
    MediaPipe's order (head by head; within a head row-major cells, then anchors per cell).
    """

    def __init__(self, spec: BlazeSpec) -> None:
        super().__init__()
        self.spec = spec
        self.stem = nn.Conv2d(3, spec.stem, 5, 2)
        self.blocks = nn.ModuleList(BlazeBlock(b) for b in spec.blocks)
        self.scores = nn.ModuleList(nn.Conv2d(h.channels, h.anchors, 1) for h in spec.heads)
        self.boxes = nn.ModuleList(
            nn.Conv2d(h.channels, h.anchors * spec.coords, 1) for h in spec.heads
        )
        self._taps = {h.after: i for i, h in enumerate(spec.heads)}

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = F.relu(self.stem(F.pad(x, same_padding(x.shape[-2], x.shape[-1], 5, 2))))
        scores, boxes = [], []
        for index, block in enumerate(self.blocks):
            x = block(x)
            if index in self._taps:
                head = self._taps[index]
                n = len(x)  # NCHW -> NHWC before flattening: the graph's anchor order
                scores.append(self.scores[head](x).permute(0, 2, 3, 1).reshape(n, -1))
                boxes.append(
                    self.boxes[head](x).permute(0, 2, 3, 1).reshape(n, -1, self.spec.coords)
                )
        return torch.cat(scores, 1), torch.cat(boxes, 1)
