"""The TF.js graph reader and the MobileNet-v1 (faceres) port, on graphs the tests write.

CI has no npm: each test builds a TF.js graph model (JSON + weight shards, quantised the ways
the format allows) from a known PyTorch network and checks what comes back.
"""

from __future__ import annotations

import base64
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from qcsfer.errors import WeightsError
from qcsfer.models import QCSModel, get_config
from qcsfer.models.backbone_file import convert_tfjs_backbone, load_backbone_file
from qcsfer.models.mobilenet import BLOCKS, ConvNormAct, MobileNetV1, from_tfjs
from qcsfer.tfjs import read_graph

SAME = base64.b64encode(b"SAME").decode()


def _attr(strides: int) -> dict:
    return {
        "strides": {"list": {"i": ["1", str(strides), str(strides), "1"]}},
        "padding": {"s": SAME},
        "data_format": {"s": base64.b64encode(b"NHWC").decode()},
    }


def write_mobilenet_graph(folder: Path, seed: int = 0, quantize: str = "float16") -> MobileNetV1:
    """A MobileNet-v1 graph as Keras/TF.js export it (BN folded, ReLU6 as Relu/Min/Max).

    Returns the network it describes (eval mode), with weights rounded as stored so its outputs
    are what the converted graph must reproduce.
    """
    torch.manual_seed(seed)
    net = MobileNetV1().eval()
    nodes = [{"name": "input_1", "op": "Placeholder", "attr": {}}]
    weights: list[tuple[str, np.ndarray, str | None]] = []
    source = "input_1"
    layers = [(net.layers[0], 2, False)]
    for block, (stride, _) in zip(net.layers[1:], BLOCKS, strict=True):
        layers += [(block[0], stride, True), (block[1], 1, False)]
    for index, (layer, stride, depthwise) in enumerate(layers):
        name = f"l{index}"
        scale = torch.rand(layer.conv.out_channels) + 0.5
        shift = torch.randn(layer.conv.out_channels) * 0.1
        kernel = layer.conv.weight.detach() * 3
        if depthwise:  # C x 1 x H x W -> H x W x C x 1, the scale as a separate Mul
            tf_kernel = kernel.permute(2, 3, 0, 1).numpy()
        else:  # out x in x H x W -> H x W x in x out, the scale folded into the kernel
            tf_kernel = (kernel * scale.view(-1, 1, 1, 1)).permute(2, 3, 1, 0).numpy()
        op = "DepthwiseConv2dNative" if depthwise else "Conv2D"
        nodes.append({"name": f"{name}/conv", "op": op, "input": [source, f"{name}/k"]})
        nodes[-1]["attr"] = _attr(stride)
        weights.append((f"{name}/k", tf_kernel, quantize))
        previous = f"{name}/conv"
        if depthwise:
            nodes.append({"name": f"{name}/mul", "op": "Mul", "input": [previous, f"{name}/s"]})
            weights.append((f"{name}/s", scale.numpy(), None))
            previous = f"{name}/mul"
        nodes.append({"name": f"{name}/add", "op": "Add", "input": [previous, f"{name}/b"]})
        weights.append((f"{name}/b", shift.numpy(), "uint8"))
        nodes.append({"name": f"{name}/relu", "op": "Relu", "input": [f"{name}/add"]})
        nodes.append({"name": f"{name}/min", "op": "Minimum", "input": [f"{name}/relu", "six"]})
        nodes.append({"name": f"{name}/max", "op": "Maximum", "input": [f"{name}/min", "zero"]})
        source = f"{name}/max"
    nodes.append({"name": "pool", "op": "Mean", "input": [source, "axes"]})
    weights += [("six", np.float32(6), None), ("zero", np.float32(0), None)]
    weights.append(("axes", np.array([1, 2], np.int32), None))
    manifest, data, stored = _encode(weights)
    model = {"format": "graph-model", "modelTopology": {"node": nodes}}
    model["weightsManifest"] = [{"paths": ["model.bin"], "weights": manifest}]
    (folder / "model.json").write_text(json.dumps(model))
    (folder / "model.bin").write_bytes(data)
    _load_expected(net, layers, stored)
    return net


def _encode(weights: list) -> tuple[list[dict], bytes, dict[str, np.ndarray]]:
    """Manifest entries, shard bytes, and each weight as a reader must decode it."""
    manifest, chunks, stored = [], [], {}
    for name, value, quantize in weights:
        value = np.asarray(value)
        entry = {"name": name, "shape": list(value.shape), "dtype": str(value.dtype)}
        if quantize == "float16":
            half = value.astype(np.float16)
            entry["quantization"] = {"dtype": "float16", "original_dtype": "float32"}
            chunks.append(half.tobytes())
            stored[name] = half.astype(np.float32)
        elif quantize == "uint8":
            low, high = float(value.min()), float(value.max())
            scale = (high - low) / 255 or 1.0
            q = np.round((value - low) / scale).astype(np.uint8)
            entry["quantization"] = {"dtype": "uint8", "scale": scale, "min": low}
            chunks.append(q.tobytes())
            stored[name] = q.astype(np.float32) * np.float32(scale) + np.float32(low)
        else:
            chunks.append(value.astype(value.dtype.newbyteorder("<")).tobytes())
            stored[name] = value
        manifest.append(entry)
    return manifest, b"".join(chunks), stored


def _load_expected(net: MobileNetV1, layers: list, stored: dict[str, np.ndarray]) -> None:
    """Give `net` the weights as stored: folded conv + affine, identity BN statistics."""
    with torch.no_grad():
        for index, (layer, _, depthwise) in enumerate(layers):
            kernel = torch.from_numpy(stored[f"l{index}/k"])
            if depthwise:
                layer.conv.weight.copy_(kernel.permute(2, 3, 0, 1))
                scale = torch.from_numpy(stored[f"l{index}/s"])
            else:
                layer.conv.weight.copy_(kernel.permute(3, 2, 0, 1))
                scale = torch.ones(layer.conv.out_channels)
            layer.norm.weight.copy_(scale * math.sqrt(1 + layer.norm.eps))
            layer.norm.bias.copy_(torch.from_numpy(stored[f"l{index}/b"]))
            layer.norm.running_mean.zero_()
            layer.norm.running_var.fill_(1)


@pytest.fixture(scope="module")
def graph_folder(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, MobileNetV1]:
    folder = tmp_path_factory.mktemp("tfjs")
    return folder, write_mobilenet_graph(folder)


def test_dequantisation_known_answers(tmp_path: Path) -> None:
    weights = [
        {"name": "u8", "shape": [3], "dtype": "float32",
         "quantization": {"dtype": "uint8", "scale": 0.5, "min": -1.0}},
        {"name": "u16", "shape": [2], "dtype": "float32",
         "quantization": {"dtype": "uint16", "scale": 2.0, "min": 1.0}},
        {"name": "f16", "shape": [2], "dtype": "float32",
         "quantization": {"dtype": "float16"}},
        {"name": "i32", "shape": [2], "dtype": "int32"},
    ]  # fmt: skip
    data = (
        np.array([0, 2, 255], np.uint8).tobytes()
        + np.array([0, 3], "<u2").tobytes()
        + np.array([0.5, -2.25], "<f2").tobytes()
        + np.array([7, -1], "<i4").tobytes()
    )
    (tmp_path / "m.json").write_text(
        json.dumps(
            {
                "format": "graph-model",
                "modelTopology": {"node": []},
                "weightsManifest": [{"paths": ["w.bin"], "weights": weights}],
            }
        )
    )
    (tmp_path / "w.bin").write_bytes(data)
    graph = read_graph(tmp_path / "m.json")
    assert graph.weight("u8").tolist() == [-1.0, 0.0, 126.5]
    assert graph.weight("u16").tolist() == [1.0, 7.0]
    assert graph.weight("f16").tolist() == [0.5, -2.25]
    assert graph.weight("i32").tolist() == [7, -1]
    assert set(graph.files_sha256) == {"m.json", "w.bin"}


def test_reader_refuses_bad_manifests(tmp_path: Path) -> None:
    def write(paths: list[str], shape: list[int]) -> Path:
        entry = {"name": "w", "shape": shape, "dtype": "float32"}
        model = {"format": "graph-model", "modelTopology": {"node": []}}
        model["weightsManifest"] = [{"paths": paths, "weights": [entry]}]
        (tmp_path / "m.json").write_text(json.dumps(model))
        return tmp_path / "m.json"

    (tmp_path / "w.bin").write_bytes(np.zeros(4, "<f4").tobytes())
    with pytest.raises(WeightsError, match="outside the model's folder"):
        read_graph(write(["../w.bin"], [4]))
    with pytest.raises(WeightsError, match="hold 16 bytes, manifest needs 12"):
        read_graph(write(["w.bin"], [3]))
    with pytest.raises(WeightsError, match="past the end"):
        read_graph(write(["w.bin"], [5]))
    (tmp_path / "m.json").write_text("{}")
    with pytest.raises(WeightsError, match=r"not a TF\.js graph model"):
        read_graph(tmp_path / "m.json")


def test_same_padding_puts_the_odd_pixel_right_and_below() -> None:
    """TensorFlow's SAME at stride 2 on an even input pads 0 above/left and 1 below/right."""
    layer = ConvNormAct(1, 1, 3, 2).eval()
    with torch.no_grad():
        layer.conv.weight.fill_(1.0)
    x = torch.arange(16.0).view(1, 1, 4, 4) / 100
    expected = F.relu6(F.conv2d(F.pad(x, (0, 1, 0, 1)), layer.conv.weight, stride=2))
    expected = layer.norm(expected)  # identity statistics: x / sqrt(1 + eps)
    with torch.no_grad():
        out = layer(x)
    assert torch.allclose(out, F.relu6(expected))
    # The top-left output sums the 3x3 corner (no padding above/left): 45 / 100; symmetric
    # padding (PyTorch's padding=1) would sum the 2x2 corner instead, 10 / 100.
    assert math.isclose(float(out[0, 0, 0, 0]), 0.45 / math.sqrt(1 + 1e-3), rel_tol=1e-5)


def test_port_reproduces_the_graph_network(graph_folder: tuple[Path, MobileNetV1]) -> None:
    folder, expected = graph_folder
    state, hashes = from_tfjs(folder / "model.json")
    port = MobileNetV1().eval()
    port.load_state_dict(state)
    x = torch.rand(2, 3, 96, 80) * 255  # any size, odd strides included
    with torch.no_grad():
        for ours, theirs in zip(port(x), expected(x), strict=True):
            assert torch.allclose(ours, theirs, rtol=1e-4, atol=1e-4)
    assert set(hashes) == {"model.json", "model.bin"}


def test_structure_is_checked_not_trusted(tmp_path: Path) -> None:
    write_mobilenet_graph(tmp_path)
    model = json.loads((tmp_path / "model.json").read_text())
    for node in model["modelTopology"]["node"]:
        if node["name"] == "l3/conv":  # block 2's depthwise conv: stride 2 -> 1
            node["attr"] = _attr(1)
    (tmp_path / "model.json").write_text(json.dumps(model))
    with pytest.raises(WeightsError, match="l3/conv: expected stride 2"):
        from_tfjs(tmp_path / "model.json")


def test_backbone_file_round_trip_and_init(
    graph_folder: tuple[Path, MobileNetV1], tmp_path: Path
) -> None:
    folder, expected = graph_folder
    path = convert_tfjs_backbone(folder / "model.json", tmp_path / "faceres.safetensors")
    model = QCSModel(get_config("faceres", num_classes=8), "qcs")
    card = load_backbone_file(path, model.base.backbone)
    assert card["architecture"] == "mobilenet" and "VGGFace2" in card["licence"]
    assert card["source_sha256"]["model.bin"]
    x = torch.rand(1, 3, 128, 128) * 255
    model.eval()
    with torch.no_grad():
        assert torch.allclose(model.base.backbone.descriptor(x), expected.descriptor(x), atol=1e-4)
    ir = QCSModel(get_config("tiny"), "qcs")
    with pytest.raises(WeightsError, match="mobilenet backbone"):
        load_backbone_file(path, ir.base.backbone)


def test_faceres_model_trains_with_frozen_statistics() -> None:
    config = get_config("faceres", num_classes=8)
    model = QCSModel(config, "qcs").train()
    norms = [m for m in model.base.backbone.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert norms and not any(m.training for m in norms)  # frozen statistics
    assert model.base.vit.training
    out = model(torch.rand(4, 2, 3, 128, 128) * 255)
    assert out.base.shape == (4, 2, 8) and out.cross.shape == (4, 2, 8)
    assert model.base.embed(torch.rand(2, 3, 128, 128)).shape == (2, 48, config.dim)


def test_convert_command_writes_a_backbone_file(
    graph_folder: tuple[Path, MobileNetV1], tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    from qcsfer.cli import main

    folder, _ = graph_folder
    out = tmp_path / "faceres.safetensors"
    assert main(["convert", "--from", "tfjs", str(folder / "model.json"), "--out", str(out)]) == 0
    assert "use it as init.backbone" in capsys.readouterr().out
    assert main(["convert", str(folder / "model.json"), "--out", str(tmp_path / "x")]) == 2
    assert "--dataset is required" in capsys.readouterr().err


def test_backbone_learning_rate_and_frozen_layers() -> None:
    from qcsfer.config import TrainConfig, from_dict
    from qcsfer.engine.optim import build_optimizer

    optim = {"lr": 1e-3, "backbone_lr_scale": 0.1, "frozen_layers": 3}
    config = from_dict(TrainConfig, {"model": "faceres", "optim": optim})
    model = QCSModel(get_config("faceres", num_classes=8), "qcs")
    optimizer = build_optimizer(model, config)
    layers = model.base.backbone.layers
    assert not any(p.requires_grad for layer in layers[:3] for p in layer.parameters())
    assert all(p.requires_grad for p in layers[3].parameters())
    rates = {id(p): g["lr"] for g in optimizer.param_groups for p in g["params"]}
    assert rates[id(layers[3][0].conv.weight)] == pytest.approx(1e-4)
    assert rates[id(model.base.vit.head.weight)] == pytest.approx(1e-3)
    assert id(layers[0].conv.weight) not in rates
    tiny = from_dict(TrainConfig, {"model": "tiny", "optim": {"frozen_layers": 2}})
    with pytest.raises(Exception, match="mobilenet backbone"):
        build_optimizer(QCSModel(get_config("tiny"), "qcs"), tiny)
