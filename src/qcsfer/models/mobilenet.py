"""MobileNet-v1 as a QCS backbone: the three maps at strides 8, 16 and 32.

The face-recognition-pretrained starting point is HSE's MobileNet-v1 trained on VGGFace2
("faceres"), published as a TF.js graph model; `from_tfjs` maps that graph onto this module
(timm's convention: the foreign mapping lives beside the model). The graph is standard
MobileNet-v1 at width 1.0: a stride-2 3x3 conv, then 13 depthwise/pointwise blocks, each
conv followed by its (folded) BatchNorm and ReLU6, written in the graph as Relu, Minimum(6),
Maximum(0). TensorFlow pads "SAME" asymmetrically (the extra row and column go below and to
the right), so the stride-2 convs pad here the same way.

BatchNorm is kept as a module so the architecture also trains from random initialisation. A
converted graph has no BatchNorm statistics (they are folded into kernels and biases), so its
BatchNorm layers hold identity statistics and the folded affine, and `frozen_norm=True` keeps
them in eval mode during fine-tuning (the folded affine stays trainable).
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..errors import WeightsError
from ..tfjs import Node, TfjsGraph, read_graph, same_padding

# (depthwise stride, pointwise output channels) of blocks 1-13; the stem is 3 -> 32, stride 2.
BLOCKS: tuple[tuple[int, int], ...] = (
    (1, 64), (2, 128), (1, 128), (2, 256), (1, 256), (2, 512),
    (1, 512), (1, 512), (1, 512), (1, 512), (1, 512), (2, 1024), (1, 1024),
)  # fmt: skip
STAGE_ENDS = (5, 11, 13)  # blocks whose outputs are the stride-8, -16 and -32 maps
WIDTHS = (256, 512, 1024)
BN_EPS = 1e-3  # Keras' BatchNorm default, which the folded graph was made with


def stage_sizes(size: int) -> tuple[int, int, int]:
    """Sides of the three maps for a square input (TensorFlow SAME: ceil(size / stride))."""
    return tuple(math.ceil(size / s) for s in (8, 16, 32))  # type: ignore[return-value]


class ConvNormAct(nn.Module):
    """Conv (TF SAME padding) -> BatchNorm -> ReLU6; depthwise when `groups` = channels."""

    def __init__(self, cin: int, cout: int, kernel: int, stride: int, groups: int = 1) -> None:
        super().__init__()
        self.kernel, self.stride = kernel, stride
        self.conv = nn.Conv2d(cin, cout, kernel, stride, 0, groups=groups, bias=False)
        self.norm = nn.BatchNorm2d(cout, eps=BN_EPS)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.kernel > 1:
            x = F.pad(x, same_padding(x.shape[-2], x.shape[-1], self.kernel, self.stride))
        return F.relu6(self.norm(self.conv(x)))


class MobileNetV1(nn.Module):
    """Stem and 13 depthwise-separable blocks; returns the stride-8, -16 and -32 maps."""

    widths = WIDTHS

    def __init__(self, in_channels: int = 3, frozen_norm: bool = False) -> None:
        super().__init__()
        self.frozen_norm = frozen_norm
        layers: list[nn.Module] = [ConvNormAct(in_channels, 32, 3, 2)]
        width = 32
        for stride, out in BLOCKS:
            layers.append(
                nn.Sequential(
                    ConvNormAct(width, width, 3, stride, groups=width),  # depthwise
                    ConvNormAct(width, out, 1, 1),  # pointwise
                )
            )
            width = out
        self.layers = nn.ModuleList(layers)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        maps = []
        for index, layer in enumerate(self.layers):
            x = layer(x)
            if index in STAGE_ENDS:
                maps.append(x)
        return maps

    def descriptor(self, x: torch.Tensor) -> torch.Tensor:
        """The face-recognition descriptor: the global mean of the last map (faceres' 1024-d)."""
        return self.forward(x)[-1].mean(dim=(2, 3))

    def train(self, mode: bool = True) -> MobileNetV1:
        """As nn.Module.train, but pretrained BatchNorm statistics stay fixed when frozen."""
        super().train(mode)
        if self.frozen_norm:
            for module in self.modules():
                if isinstance(module, nn.BatchNorm2d):
                    module.eval()
        return self


# ---- the TF.js graph of faceres (or any Keras MobileNet-v1 exported the same way) ----


def from_tfjs(path: str | os.PathLike[str]) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """A MobileNetV1 state dict from a TF.js MobileNet-v1 graph, and the graph's file hashes.

    Follows the graph from its input through every conv, checking each op and attribute it
    relies on (strides, SAME padding, NHWC, the ReLU6 clip values) instead of trusting names.
    """
    graph = read_graph(path)
    inputs = [n for n in graph.nodes.values() if n.op == "Placeholder"]
    if len(inputs) != 1:
        raise WeightsError(f"{path}: expected one graph input, found {len(inputs)}")
    state: dict[str, torch.Tensor] = {}
    current = inputs[0].name
    specs = [("layers.0", 1, 2)] + [
        (f"layers.{i + 1}.{part}", kind, stride if part == "0" else 1)
        for i, (stride, _) in enumerate(BLOCKS)
        for part, kind in (("0", 0), ("1", 1))
    ]
    for prefix, kind, stride in specs:  # kind 0: depthwise, 1: ordinary conv
        current = _read_conv(graph, current, prefix, kind == 0, stride, state)
    pool = graph.consumers(current)
    if not pool or pool[0].op != "Mean":
        raise WeightsError(f"{path}: expected the global Mean after the last block")
    return state, graph.files_sha256


def _read_conv(
    graph: TfjsGraph,
    source: str,
    prefix: str,
    depthwise: bool,
    stride: int,
    state: dict[str, torch.Tensor],
) -> str:
    """Map conv -> [Mul] -> Add -> Relu -> Minimum -> Maximum onto `prefix`; return its output."""
    op = "DepthwiseConv2dNative" if depthwise else "Conv2D"
    conv = _single(graph, source, op)
    if conv.attr.get("padding") != "SAME" or conv.attr.get("data_format", "NHWC") != "NHWC":
        raise WeightsError(f"{conv.name}: expected SAME padding in NHWC")
    if list(conv.attr.get("strides", [1, 1, 1, 1])) != [1, stride, stride, 1]:
        raise WeightsError(f"{conv.name}: expected stride {stride}, got {conv.attr['strides']}")
    kernel = graph.weight(conv.inputs[1])  # H x W x in x out, or H x W x C x 1 (depthwise)
    node = _single(graph, conv.name, ("Mul", "Add"))
    scale = np.ones(kernel.shape[2] if depthwise else kernel.shape[3], np.float32)
    if node.op == "Mul":
        scale = graph.weight(node.inputs[1]).reshape(-1)
        node = _single(graph, node.name, "Add")
    shift = graph.weight(node.inputs[1]).reshape(-1)
    relu = _single(graph, node.name, "Relu")
    low = _single(graph, relu.name, "Minimum")
    high = _single(graph, low.name, "Maximum")
    if float(graph.weight(low.inputs[1])) != 6.0 or float(graph.weight(high.inputs[1])) != 0.0:
        raise WeightsError(f"{relu.name}: expected ReLU6 (clip to 0..6)")
    # to C x 1 x H x W (depthwise) or out x in x H x W
    weight = kernel.transpose(2, 3, 0, 1) if depthwise else kernel.transpose(3, 2, 0, 1)
    state.update(_conv_norm(prefix, weight, scale, shift))
    return high.name


def _single(graph: TfjsGraph, source: str, ops: str | tuple[str, ...]) -> Node:
    ops = (ops,) if isinstance(ops, str) else ops
    consumers = graph.consumers(source)
    if len(consumers) != 1 or consumers[0].op not in ops:
        found = [c.op for c in consumers]
        raise WeightsError(f"{graph.path}: after {source!r} expected {'/'.join(ops)}, got {found}")
    return consumers[0]


def _conv_norm(
    prefix: str, weight: np.ndarray, scale: np.ndarray, shift: np.ndarray
) -> Mapping[str, torch.Tensor]:
    """Folded conv + affine as conv + BatchNorm with identity statistics (exact in eval mode)."""
    channels = weight.shape[0]
    return {
        f"{prefix}.conv.weight": torch.from_numpy(np.ascontiguousarray(weight, np.float32)),
        f"{prefix}.norm.weight": torch.from_numpy(scale * np.float32(math.sqrt(1 + BN_EPS))),
        f"{prefix}.norm.bias": torch.from_numpy(shift.astype(np.float32)),
        f"{prefix}.norm.running_mean": torch.zeros(channels),
        f"{prefix}.norm.running_var": torch.ones(channels),
        f"{prefix}.norm.num_batches_tracked": torch.tensor(0),
    }
