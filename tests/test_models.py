"""Model tests: shapes, paper sizes, CSA against its formulas, training topology, weights I/O.

CPU only and quick: the paper-sized model is built once per module and reused.
"""

from __future__ import annotations

import copy
import json
import math
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

from qcsfer.card import read_card
from qcsfer.config import InitConfig
from qcsfer.engine.warm_start import initialize
from qcsfer.errors import TrainingError
from qcsfer.models import (
    TOPOLOGY,
    BaseNetwork,
    CrossSimilarityAttention,
    CSAConfig,
    ModelConfig,
    QCSModel,
    get_config,
)
from qcsfer.models.complexity import count_parameters, measure_complexity
from qcsfer.models.vit import ViT
from qcsfer.models.weights import (
    WeightsError,
    load_weights,
    model_config,
    network_card,
    save_weights,
)

from .model_builders import tiny_model

QCS_PAIRS = TOPOLOGY["qcs"]
SWAP_PAIRS = [1, 0, 3, 2]  # anchor <-> positive together with negative <-> negative2


@pytest.fixture(scope="module", autouse=True)
def _one_thread() -> Iterator[None]:
    """These tensors are small: one thread is as fast, and on a busy 2-core machine 2 OpenMP
    threads contending with other work made this file ~10x slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# ---------------------------------------------------------------------------------------------
# Shapes and sizes


def _expected_shapes(name: str) -> tuple[int, int, list[tuple[int, int]], int, int]:
    """(input side, backbone side, stage maps (channels, side), tokens per scale, dim)."""
    if name == "paper":  # written out: the reference's numbers (method doc, section 1)
        return 224, 112, [(64, 56), (128, 28), (256, 14)], 49, 768
    c = get_config(name)  # CPU configurations are tuned: follow them
    maps = [(w, c.backbone_size // 2 ** (i + 1)) for i, w in enumerate(c.widths)]
    return c.image_size, c.backbone_size, maps, c.token_grid**2, c.dim


@pytest.mark.parametrize("name", ["paper", "small", "tiny"])
def test_shapes_through_every_stage(name: str, request: pytest.FixtureRequest) -> None:
    side, backbone_side, maps, n, dim = _expected_shapes(name)
    model = request.getfixturevalue("paper") if name == "paper" else QCSModel(get_config(name))
    model.eval()
    base, k = model.base, model.config.num_classes
    images = torch.randn(4, 1, 3, side, side)
    x = images[0]
    with torch.no_grad():
        resized = F.interpolate(x, size=base.config.backbone_size, mode="nearest")
        assert resized.shape == (1, 3, backbone_side, backbone_side)
        stage_maps = base.backbone(resized)
        assert [tuple(m.shape) for m in stage_maps] == [(1, c, s, s) for c, s in maps]
        scales = [embed(m) for embed, m in zip(base.tokens, stage_maps, strict=True)]
        assert [tuple(t.shape) for t in scales] == [(1, n, dim)] * 3
        tokens = base.embed(x)
        assert torch.equal(tokens, torch.cat(scales, dim=1))
        features = base.vit.forward_features(tokens)
        logits = base.vit.forward_head(features)
        assert logits.shape == (1, k) and features.shape == (1, 1 + 3 * n, dim)
        assert torch.equal(base(x), logits) and torch.equal(base.forward_features(x), features)

        # Training graph, 4 branches of batch 1: what each per-scale CSA receives and returns.
        seen: list[tuple[tuple[int, ...], tuple[int, ...]]] = []
        hooks = [
            csa.register_forward_hook(lambda _m, a, o: seen.append((a[0].shape, o.shape)))
            for csa in model.csa
        ]
        try:
            out = model(images)
        finally:
            for hook in hooks:
                hook.remove()
    assert seen == [((4, 1, n, dim), (4, 1, n, dim))] * 3
    assert out.base.shape == (4, 1, k) and out.cross.shape == (4, 1, k)


def test_paper_size_and_macs(paper: QCSModel) -> None:
    report = measure_complexity(paper.base)
    assert report.params_inference == pytest.approx(40.7e6, rel=0.01)
    assert report.gmacs_inference == pytest.approx(8.1, rel=0.01)
    assert report.tokens_per_scale == (49, 49, 49)
    assert report.vit_sequence == 148
    assert report.macs_training is None
    # The training graph only adds CSA and the cross ViT, which inference never runs.
    extra = count_parameters(paper.csa) + count_parameters(paper.cross_vit)
    assert count_parameters(paper) == report.params_inference + extra


def test_training_graph_macs_are_consistent() -> None:
    report = measure_complexity(get_config("tiny"), mode="qcs")
    assert report.branches == 4 and report.params_training > report.params_inference
    for part in ("backbone", "tokens", "vit"):  # every branch runs the whole base network
        assert report.macs_training_by_part[part] == 4 * report.macs_inference_by_part[part]
    assert report.macs_training_by_part["csa"] > 0 and report.macs_training_by_part["cross_vit"] > 0
    assert report.macs_training == sum(report.macs_training_by_part.values())


# ---------------------------------------------------------------------------------------------
# CSA against the formulas of the method doc, section 3, written out independently


def _layer_norm(x: torch.Tensor, norm: torch.nn.LayerNorm) -> torch.Tensor:
    mean = x.mean(-1, keepdim=True)
    var = ((x - mean) ** 2).mean(-1, keepdim=True)
    return (x - mean) / torch.sqrt(var + norm.eps) * norm.weight + norm.bias


def _distances(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """B x Na x C, B x Nb x C -> B x Na x Nb Euclidean distances, by explicit loops."""
    out = torch.zeros(a.shape[0], a.shape[1], b.shape[1])
    for s in range(a.shape[0]):
        for r in range(a.shape[1]):
            for c in range(b.shape[1]):
                out[s, r, c] = torch.sqrt(((a[s, r] - b[s, c]) ** 2).sum())
    return out


def _column_scores(m: torch.Tensor) -> torch.Tensor:
    """Score over the column image's positions: each row (partner token) L2-normalised over the
    columns, then summed over rows."""
    out = torch.zeros(m.shape[0], m.shape[2])
    for s in range(m.shape[0]):
        for r in range(m.shape[1]):
            out[s] += m[s, r] / torch.sqrt((m[s, r] ** 2).sum())
    return out


def reference_csa(
    csa: CrossSimilarityAttention, x: torch.Tensor, variant: str, normalize: str
) -> tuple[torch.Tensor, torch.Tensor]:
    """(attention maps G x B x N, outputs G x B x N x C) for branches 1..4 = indices 0..3."""
    c = x.shape[-1]
    xn = _layer_norm(x, csa.norm1)
    qv = xn @ csa.proj.weight.T + csa.proj.bias
    q, v = qv[..., :c], qv[..., c:]

    def shift(m: torch.Tensor) -> torch.Tensor:
        return m - (m.min() if normalize == "batch" else m.amin(dim=(1, 2), keepdim=True))

    def similarity(m: torch.Tensor) -> torch.Tensor:
        return (m.max() if normalize == "batch" else m.amax(dim=(1, 2), keepdim=True)) - m

    s21 = similarity(shift(_distances(q[1], q[0])))
    s43 = similarity(shift(_distances(q[3], q[2])))
    d31 = shift(_distances(q[2], q[0]))
    d42 = shift(_distances(q[3], q[1]))

    def rows(m: torch.Tensor) -> torch.Tensor:  # the row image's scores: the transposed matrix
        return _column_scores(m.transpose(1, 2))

    s = [_column_scores(s21), rows(s21), _column_scores(s43), rows(s43)]
    d = [_column_scores(d31), _column_scores(d42), rows(d31), rows(d42)]
    if variant == "SD":
        k = 1 + math.tanh(float(csa.theta))
        logits = [s[i] + k * d[i] for i in range(4)]
    else:
        logits = s if variant == "S" else d
    a = torch.stack([torch.exp(t) / torch.exp(t).sum(-1, keepdim=True) for t in logits])
    y = xn + a.unsqueeze(-1) * v
    z = _layer_norm(y, csa.norm2)
    hidden = F.gelu(z @ csa.mlp.fc1.weight.T + csa.mlp.fc1.bias)
    return a, z + hidden @ csa.mlp.fc2.weight.T + csa.mlp.fc2.bias


def _csa(variant: str = "SD", normalize: str = "batch", dim: int = 6) -> CrossSimilarityAttention:
    torch.manual_seed(1)
    csa = CrossSimilarityAttention(dim, 4.0, CSAConfig(variant=variant, normalize=normalize))
    with torch.no_grad():  # non-trivial LayerNorms and k != 1, so every term is exercised
        for norm in (csa.norm1, csa.norm2):
            norm.weight.uniform_(0.5, 1.5)
            norm.bias.normal_(0, 0.1)
        if csa.theta is not None:
            csa.theta.fill_(0.3)
    return csa


def _used(csa: CrossSimilarityAttention) -> list:
    return [p for p in QCS_PAIRS if p.relation in csa.relations]


@pytest.mark.parametrize("normalize", ["batch", "sample"])
@pytest.mark.parametrize("variant", ["SD", "S", "D"])
def test_csa_matches_formulas(variant: str, normalize: str) -> None:
    csa = _csa(variant, normalize)
    x = torch.randn(4, 2, 4, 6)  # G=4 branches, B=2, N=4 tokens, C=6
    with torch.no_grad():
        expected_a, expected_out = reference_csa(csa, x, variant, normalize)
        q = csa.proj(csa.norm1(x)).chunk(2, dim=-1)[0]
        a = csa.attention_map(q, _used(csa))
        out = csa(x, QCS_PAIRS)
    torch.testing.assert_close(a, expected_a, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(out, expected_out, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("variant", ["SD", "S", "D"])
def test_attention_maps_sum_to_one(variant: str) -> None:
    csa = _csa(variant, dim=16)
    q = torch.randn(4, 3, 9, 16)
    a = csa.attention_map(q, _used(csa))
    assert a.shape == (4, 3, 9) and bool((a >= 0).all())
    torch.testing.assert_close(a.sum(-1), torch.ones(4, 3))


def test_sample_normalisation_isolates_samples() -> None:
    torch.manual_seed(2)
    q = torch.randn(4, 2, 5, 8)
    changed = q.clone()
    changed[:, 1] = 5 * changed[:, 1] + 1  # only the second sample changes
    maps = {}
    for normalize in ("sample", "batch"):
        csa = _csa("SD", normalize, dim=8)
        maps[normalize] = (csa.attention_map(q, QCS_PAIRS), csa.attention_map(changed, QCS_PAIRS))
    before, after = maps["sample"]
    torch.testing.assert_close(after[:, 0], before[:, 0])
    before, after = maps["batch"]  # batch-wide min/max: the first sample's map moves too
    assert not torch.allclose(after[:, 0], before[:, 0], atol=1e-4)


@pytest.mark.parametrize("normalize", ["batch", "sample"])
def test_circle_symmetry(normalize: str) -> None:
    """1 -S- 2 -D- 4 -S- 3 -D- 1 is unchanged by 1<->2 with 3<->4: outputs permute alike."""
    csa = _csa("SD", normalize, dim=8)
    x = torch.randn(4, 2, 5, 8)
    with torch.no_grad():
        out = csa(x, QCS_PAIRS)
        torch.testing.assert_close(csa(x[SWAP_PAIRS], QCS_PAIRS), out[SWAP_PAIRS])
        # Control: swapping anchor and negative alone is not a symmetry of the circle.
        other = [2, 1, 0, 3]
        assert not torch.allclose(csa(x[other], QCS_PAIRS), out[other], atol=1e-4)


def test_circle_symmetry_of_the_whole_model() -> None:
    model = tiny_model().eval()
    images = torch.randn(4, 2, 3, 48, 48)
    with torch.no_grad():
        out = model(images)
        swapped = model(images[SWAP_PAIRS])
    torch.testing.assert_close(swapped.cross, out.cross[SWAP_PAIRS], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(swapped.base, out.base[SWAP_PAIRS])


# ---------------------------------------------------------------------------------------------
# Training topology and inference path


def test_cross_loss_alone_trains_the_backbone() -> None:
    model = tiny_model().train()
    images = torch.randn(4, 2, 3, 48, 48)
    targets = torch.tensor([[0, 1], [0, 1], [2, 3], [2, 3]])
    out = model(images)
    F.cross_entropy(out.cross.flatten(0, 1), targets.flatten()).backward()
    for name, p in model.base.backbone.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name
    # The base head is not on the cross path: it receives nothing from this loss.
    assert model.base.vit.head.weight.grad is None
    assert model.base.vit.se_block.linear1.weight.grad is None


@pytest.mark.parametrize("mode", ["qcs", "dcs"])
def test_base_alone_gives_the_training_base_logits(mode: str) -> None:
    model = tiny_model(mode).eval()
    g = model.branches
    images = torch.randn(g, 3, 3, 48, 48)
    with torch.no_grad():
        out = model(images)
        alone = model.base(images.flatten(0, 1))
        assert torch.equal(alone, out.base.flatten(0, 1))
        # One batched pass of G*B images equals G sequential base calls in eval mode.
        for branch in range(g):
            torch.testing.assert_close(model.base(images[branch]), out.base[branch])
    # Training-mode BatchNorm differs by design: statistics over all G*B images of the step.
    model.train()
    with torch.no_grad():
        assert not torch.allclose(model.base(images[0]), model(images).base[0], atol=1e-4)


def test_bn_per_branch_is_the_reference_sequential_calls() -> None:
    model = tiny_model("qcs", bn_per_branch=True).train()
    sequential = copy.deepcopy(model)
    images = torch.randn(4, 3, 3, 48, 48)
    with torch.no_grad():
        out = model(images)
        expected = torch.stack([sequential.base(branch) for branch in images])
    assert torch.equal(out.base, expected)  # per-branch statistics, bit for bit
    for ours, theirs in zip(model.base.buffers(), sequential.base.buffers(), strict=True):
        assert torch.equal(ours, theirs)  # and four running-statistics updates, as theirs
    assert model.base.backbone.stem[1].num_batches_tracked == 4


def test_attention_projection_dropout_is_an_option() -> None:
    def proj_dropout(vit: ViT) -> float:
        return vit.blocks[0].attn.proj_drop.p

    options = {"num_tokens": 4, "dim": 8, "depth": 1, "heads": 2, "mlp_ratio": 2.0}
    reference_7 = ViT(**options, num_classes=7, dropout=0.5)
    assert proj_dropout(reference_7) == 0.0 and reference_7.blocks[0].mlp.drop.p == 0.5
    assert proj_dropout(ViT(**options, num_classes=8, dropout=0.5, attn_proj_dropout=True)) == 0.5
    assert not get_config("paper").attn_proj_dropout  # the reference's 7-class ViT
    assert get_config("small").attn_proj_dropout  # our CPU models keep how they were trained
    vit = QCSModel(get_config("tiny", cross_dropout=0.3, attn_proj_dropout=True), "qcs").cross_vit
    assert proj_dropout(vit) == 0.3


def test_model_configs_are_read_and_checked_like_every_configuration() -> None:
    """Keys and types by `qcsfer.typed_data`, as for training recipes and preprocessing."""
    for name in ("paper", "small", "tiny"):
        assert ModelConfig.from_dict(get_config(name).to_dict()) == get_config(name)
    assert get_config("tiny", csa={"residual": "prenorm"}).csa.residual == "prenorm"
    for change, message in [
        ({"dim": "7"}, r"model\.dim: expected an integer, got '7'"),
        ({"units": [1, 2]}, r"model\.units: expected 3 values"),
        ({"csa": {"variant": "X"}}, r"model\.csa\.variant: 'X' is not one of"),
        ({"depth": 3}, r"model: unknown key\(s\) \['depth'\]"),
    ]:
        with pytest.raises(ValueError, match=message):
            get_config("tiny", **change)


# ---------------------------------------------------------------------------------------------
# Our weights files

PREPROCESSING = {
    "image_size": 48,
    "load_size": 56,
    "grayscale": False,
    "mean": [0.485, 0.456, 0.406],
    "std": [0.229, 0.224, 0.225],
}


@pytest.mark.parametrize("network", ["base", "training"])
def test_weights_round_trip(network: str, tmp_path: Path) -> None:
    model = tiny_model()
    with torch.no_grad():  # move BatchNorm statistics away from their defaults
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.normal_(0, 0.1)
                m.running_var.uniform_(0.5, 1.5)
    model.eval()
    classes = ["a", "b", "c", "d", "e"]
    saved = model.base if network == "base" else model
    path = save_weights(
        saved,
        tmp_path / "best.safetensors",
        network_card(
            saved,
            classes=classes,
            preprocessing=PREPROCESSING,
            mode="qcs",
            provenance={"epoch": 3, "run": tmp_path},
        ),
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best.json", "best.safetensors"]
    assert (path.stat().st_mode & 0o777) == 0o644  # not the 0600 of the temporary file

    loaded, card = load_weights(path)
    assert type(loaded) is type(saved) and not loaded.training
    assert card.classes == tuple(classes) and card.preprocessing.to_dict() == PREPROCESSING
    assert card.network == network and card.mode == "qcs"
    assert card.provenance["epoch"] == 3
    assert ModelConfig.from_dict(card.model) == model_config(card) == model.config
    images = torch.randn(4, 2, 3, 48, 48)
    with torch.no_grad():
        if network == "training":
            expected, got = model(images), loaded(images)
            assert torch.equal(expected.base, got.base) and torch.equal(expected.cross, got.cross)
        expected = model.base.forward_features(images[0])
        base, _ = load_weights(tmp_path / "best.json", base_only=True)
        assert isinstance(base, BaseNetwork)
        features = base.forward_features(images[0])
    assert torch.equal(expected, features)


def test_weights_errors_name_the_file(tmp_path: Path) -> None:
    model = tiny_model().base
    path = save_weights(
        model,
        tmp_path / "w.safetensors",
        network_card(
            model,
            classes=list("abcde"),
            preprocessing=PREPROCESSING,
        ),
    )
    sidecar = tmp_path / "w.json"
    metadata = json.loads(sidecar.read_text())

    tensors = load_file(path)
    del tensors["vit.head.weight"]
    tensors["vit.extra"] = torch.zeros(2)
    tensors["backbone.stem.0.weight"] = torch.zeros(1, 1, 1, 1)
    save_file(tensors, path)
    with pytest.raises(WeightsError, match="sha256"):
        load_weights(path)
    del metadata["tensors"]["sha256"]
    sidecar.write_text(json.dumps(metadata))
    with pytest.raises(WeightsError) as info:
        load_weights(path)
    message = str(info.value)
    assert str(path) in message
    for key in ("vit.head.weight", "vit.extra", "backbone.stem.0.weight"):
        assert key in message

    sidecar.unlink()
    with pytest.raises(WeightsError, match=re.escape(str(sidecar))):
        load_weights(path)
    with pytest.raises(WeightsError, match="not JSON serialisable"):
        save_weights(
            model,
            tmp_path / "y.safetensors",
            network_card(
                model,
                classes=list("abcde"),
                preprocessing=PREPROCESSING,
                provenance={"x": object()},
            ),
        )
    assert not list(tmp_path.glob("*y.*"))  # nothing half-written
    with pytest.raises(WeightsError, match="2 class names for a 5-class model"):
        save_weights(
            model,
            tmp_path / "x.safetensors",
            network_card(
                model,
                classes=["a", "b"],
                preprocessing=PREPROCESSING,
            ),
        )
    with pytest.raises(
        WeightsError, match=r"invalid preprocessing: preprocessing lacks \['load_size'"
    ):
        save_weights(
            model,
            tmp_path / "z.safetensors",
            network_card(
                model,
                classes=list("abcde"),
                preprocessing={"image_size": 48},
            ),
        )
    assert not list(tmp_path.glob("z.*"))  # nothing written


def test_read_card_validates_the_sidecar(tmp_path: Path) -> None:
    base = tiny_model().base
    path = save_weights(
        base,
        tmp_path / "w.safetensors",
        network_card(base, classes=list("abcde"), preprocessing=PREPROCESSING),
    )
    sidecar = tmp_path / "w.json"
    good = json.loads(sidecar.read_text())
    assert read_card(path).preprocessing.to_dict() == PREPROCESSING
    broken = [
        (r"lacks \['preprocessing'\]", {"preprocessing": None}),
        ("a 'preprocessing' mapping", {"preprocessing": [48, 56]}),
        ("invalid preprocessing: preprocessing lacks", {"preprocessing": {"image_size": 48}}),
        ("preprocessing: unknown key", {"preprocessing": {**PREPROCESSING, "size": 48}}),
        ("load_size 40 < image_size 48", {"preprocessing": {**PREPROCESSING, "load_size": 40}}),
        ("std must be > 0", {"preprocessing": {**PREPROCESSING, "std": [0.2, 0.0, 0.2]}}),
        (
            "preprocessing.mean: expected 3 values",
            {"preprocessing": {**PREPROCESSING, "mean": [0.5, 0.5]}},
        ),
        ("format_version must be a positive integer", {"format_version": "1"}),
        ("format_version must be a positive integer", {"format_version": None}),
        ("classes must be a list of names", {"classes": "abcde"}),
        ("classes must be a list of names", {"classes": [0, 1, 2, 3, 4]}),
    ]
    for message, change in broken:
        metadata = {k: v for k, v in {**good, **change}.items() if v is not None}
        sidecar.write_text(json.dumps(metadata))
        with pytest.raises(WeightsError, match=message) as info:
            read_card(path)
        assert str(sidecar) in str(info.value)


def test_init_weights_continues_from_a_training_graph_or_a_base(tmp_path: Path) -> None:
    """`init.weights` (a second stage of training) loads every tensor the file holds."""
    source = tiny_model()
    with torch.no_grad():  # unlike any fresh tiny_model()
        for p in source.parameters():
            p.add_(torch.randn_like(p))

    def save(module: torch.nn.Module, name: str) -> Path:
        return save_weights(
            module,
            tmp_path / name,
            network_card(
                module,
                classes=list("abcde"),
                preprocessing=PREPROCESSING,
                mode="qcs",
            ),
        )

    whole, base = save(source, "whole.safetensors"), save(source.base, "base.safetensors")
    for path, expected in ((whole, source.state_dict()), (base, source.base.state_dict())):
        target = tiny_model()
        initialize(target, InitConfig(weights=str(path)))
        loaded = target.state_dict() if path == whole else target.base.state_dict()
        assert all(torch.equal(loaded[k], v) for k, v in expected.items())
    with pytest.raises(TrainingError, match="qcs training graph cannot start a dcs run"):
        initialize(tiny_model(mode="dcs"), InitConfig(weights=str(whole)))
    control = tiny_model(mode="baseline")  # a baseline control of a fine-tune: the base network
    initialize(control, InitConfig(weights=str(whole)))
    expected = source.base.state_dict()
    assert all(torch.equal(v, expected[k]) for k, v in control.base.state_dict().items())


def test_attention_path_is_chosen_once_and_both_agree() -> None:
    """The fused kernel and the explicit softmax(q k^T / sqrt(d)) v give the same attention;
    which one runs is set on the module (not read from the input's device per call)."""
    from qcsfer.models.vit import Attention, use_fused_attention

    torch.manual_seed(0)
    base = BaseNetwork(get_config("tiny", num_classes=3)).eval()
    x = torch.randn(2, 3, 48, 48)
    attention = [m for m in base.modules() if isinstance(m, Attention)]
    assert attention and not any(m.fused for m in attention)
    with torch.no_grad():
        explicit = base(x)
        use_fused_attention(base, True)
        assert all(m.fused for m in attention)
        fused = base(x)
    assert torch.allclose(explicit, fused, atol=1e-5)
