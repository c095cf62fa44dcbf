"""Foreign checkpoints: the authors' reference models (every released family), POSTER++'s
ir50.pth, the restricted unpickler, `qcsfer convert` and direct use of reference checkpoints.

Reference checkpoints are synthesised from the key list the authors' RAF-DB model has
(../shared/docs/reference-checkpoint-keys-rafdb7.tsv): random tensors of those shapes, changed
per family the way the reference's model files differ (class count, DCS without theta, the
8-class AffectNet DCS model's unused fusion classifier).
"""

from __future__ import annotations

import collections
import json
import os
import pickle
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from qcsfer.cli import main
from qcsfer.config import InitConfig, load_config
from qcsfer.engine.warm_start import initialize
from qcsfer.models import QCSModel, get_config
from qcsfer.models.backbone import IRBackbone
from qcsfer.models.convert import load_ir50_backbone, load_reference_checkpoint
from qcsfer.models.reference import FAMILIES, ReferenceFamily
from qcsfer.models.weights import WeightsError, file_sha256, load_weights

from .conftest import REPO, SHARED
from .model_builders import tiny_model

REFERENCE_KEYS = SHARED / "docs" / "reference-checkpoint-keys-rafdb7.tsv"


# ---------------------------------------------------------------------------------------------
# Reference checkpoints

REFERENCE_UNUSED = re.compile(
    r"ir_back\.output_layer\..*|VIT_(base|cross)\.(patch_embed|eca_block|CON1|IRLinear[12])\..*"
    r"|VIT_(base|cross)\.blocks\.\d+\.conv\..*"
)


@pytest.fixture(scope="module")
def reference_state() -> dict[str, torch.Tensor]:
    """Random tensors for every key and shape of the authors' checkpoint (RAF-DB, 7 classes)."""
    if not REFERENCE_KEYS.is_file():
        pytest.skip(f"reference key list not found ({REFERENCE_KEYS.name})")
    generator = torch.Generator().manual_seed(3)
    state = {}
    for line in REFERENCE_KEYS.read_text().splitlines():
        if not line or line.startswith("#"):
            continue
        key, shape_text = line.split("\t")
        shape = tuple(int(s) for s in re.findall(r"\d+", shape_text))
        if key.endswith("num_batches_tracked"):
            state[key] = torch.randint(0, 1000, shape, generator=generator)
        else:
            state[key] = torch.randn(shape, generator=generator)
    return state


@pytest.mark.parametrize("nested", [False, True])
def test_reference_checkpoint_loads_completely(
    nested: bool, reference_state: dict, paper: QCSModel, tmp_path: Path
) -> None:
    saved = {"state_dict": {"module." + k: v for k, v in reference_state.items()}}
    path = tmp_path / "reference.pth"
    torch.save(saved if nested else reference_state, path)
    state, report = load_reference_checkpoint(path, get_config("paper", num_classes=7))

    unused = {k for k in reference_state if REFERENCE_UNUSED.fullmatch(k)}
    assert set(report.skipped) == unused and len(unused) == 34
    assert set(report.loaded.values()) == set(reference_state) - unused
    assert not report.defaulted
    result = paper.load_state_dict(state, strict=True)
    assert not result.missing_keys and not result.unexpected_keys
    ours = paper.state_dict()
    for name, key in report.loaded.items():
        assert torch.equal(ours[name], reference_state[key]), (name, key)
    # A few spot checks of the mapping itself.
    assert report.loaded["base.backbone.stages.2.13.residual.3.weight"] == (
        "ir_back.body3.13.res_layer.3.weight"
    )
    assert report.loaded["base.backbone.stages.1.0.shortcut.1.running_var"] == (
        "ir_back.body2.0.shortcut_layer.1.running_var"
    )
    assert report.loaded["base.tokens.0.embed.1.weight"] == "embed_q.1.weight"
    assert report.loaded["base.tokens.2.embed.0.bias"] == "embed_v.proj.bias"
    assert report.loaded["base.vit.head.weight"] == "VIT_base.head.linear.weight"
    assert report.loaded["cross_vit.blocks.0.attn.qkv.bias"] == "VIT_cross.blocks.0.attn.qkv.bias"
    assert report.loaded["csa.2.theta"] == "cross_attention_3.theta"


def test_reference_checkpoint_errors_name_the_keys(reference_state: dict) -> None:
    config = get_config("paper", num_classes=7)
    state = dict(reference_state)
    del state["VIT_base.blocks.1.mlp.fc2.weight"]
    with pytest.raises(WeightsError, match=r"missing keys \(1\)[\s\S]*base\.vit\.blocks\.1\.mlp\."):
        load_reference_checkpoint(state, config)

    state = dict(reference_state)
    state["cross_attention_2.proj.weight"] = torch.zeros(1536, 767)
    with pytest.raises(WeightsError, match=r"cross_attention_2\.proj\.weight.*\(1536, 767\)"):
        load_reference_checkpoint(state, config)

    state = dict(reference_state)
    state["VIT_base.extra_token"] = torch.zeros(3)
    state["something_else.weight"] = torch.zeros(3)
    with pytest.raises(WeightsError) as info:
        load_reference_checkpoint(state, config)
    assert "VIT_base.extra_token" in str(info.value)
    assert "something_else.weight" in str(info.value)

    # The 7-class checkpoint does not fit an 8-class model: the head shapes are named.
    with pytest.raises(WeightsError, match=r"VIT_base\.head\.linear\.weight"):
        load_reference_checkpoint(reference_state, get_config("paper", num_classes=8))


def test_missing_and_empty_checkpoints_are_named(tmp_path: Path) -> None:
    path = tmp_path / "empty.pth"
    torch.save({"state_dict": {}, "losses": np.zeros(3)}, path)  # not weights_only
    with pytest.raises(WeightsError, match=r"empty\.pth: no state dict found"):
        load_reference_checkpoint(path, get_config("tiny"))
    with pytest.raises(WeightsError, match="no such checkpoint"):
        load_reference_checkpoint(tmp_path / "absent.pth", get_config("tiny"))
    (tmp_path / "zero.pth").write_bytes(b"")
    with pytest.raises(WeightsError, match=r"zero\.pth: not a readable .*: empty file \(0 bytes\)"):
        load_reference_checkpoint(tmp_path / "zero.pth", get_config("tiny"))
    (tmp_path / "photo.pth").write_bytes(b"\xff\xd8\xff\xe0 a JPEG")
    with pytest.raises(WeightsError, match=r"photo\.pth: .*not a PyTorch file"):
        load_reference_checkpoint(tmp_path / "photo.pth", get_config("tiny"))


def _ir50_state(backbone: IRBackbone) -> dict[str, torch.Tensor]:
    """An ir50.pth-like state dict for `backbone`: its tensors under the face-recognition names
    (one flat body of 24 units), plus stage 4 and the output layer."""
    state: dict[str, torch.Tensor] = {}
    offsets = [0, 3, 7]
    for name, tensor in backbone.state_dict().items():
        parts = name.split(".")
        if parts[0] == "stem":
            key = "input_layer." + ".".join(parts[1:])
        else:
            stage, unit, branch = int(parts[1]), int(parts[2]), parts[3]
            layer = {"residual": "res_layer", "shortcut": "shortcut_layer"}[branch]
            key = f"body.{offsets[stage] + unit}.{layer}.{'.'.join(parts[4:])}"
        state[key] = tensor + 7 if tensor.dtype == torch.long else torch.randn_like(tensor)
    width = 2 * backbone.widths[-1]
    for unit in (21, 22, 23):
        state[f"body.{unit}.res_layer.1.weight"] = torch.randn(width, width, 3, 3)
    state["output_layer.3.weight"] = torch.randn(4, 8)
    return state


def test_ir50_backbone_loads_into_stages_1_to_3(tmp_path: Path) -> None:
    # A narrow IR-50 (same units, small widths) exercises the same mapping as the real one.
    backbone = IRBackbone((3, 4, 14), (4, 8, 16))
    state = _ir50_state(backbone)
    path = tmp_path / "ir50.pth"
    torch.save({"module." + k: v for k, v in state.items()}, path)
    report = load_ir50_backbone(path, backbone)
    assert set(report.skipped) == {
        "body.21.res_layer.1.weight",
        "body.22.res_layer.1.weight",
        "body.23.res_layer.1.weight",
        "output_layer.3.weight",
    }
    assert len(report.loaded) == len(backbone.state_dict())
    ours = backbone.state_dict()
    assert torch.equal(ours["stages.2.13.residual.3.weight"], state["body.20.res_layer.3.weight"])
    assert torch.equal(
        ours["stages.1.0.shortcut.0.weight"], state["body.3.shortcut_layer.0.weight"]
    )
    assert torch.equal(ours["stem.0.weight"], state["input_layer.0.weight"])

    # Old checkpoints without BatchNorm counters load, and say so.
    old = {k: v for k, v in state.items() if not k.endswith("num_batches_tracked")}
    torch.save(old, path)
    assert load_ir50_backbone(path, backbone).defaulted

    broken = dict(state)
    broken["body.5.res_layer.1.weight"] = torch.zeros(8, 8, 1, 1)
    del broken["body.9.res_layer.4.running_mean"]
    torch.save(broken, path)
    with pytest.raises(WeightsError) as info:
        load_ir50_backbone(path, backbone)
    assert "body.5.res_layer.1.weight" in str(info.value)
    assert "stages.2.2.residual.4.running_mean" in str(info.value)

    with pytest.raises(WeightsError, match=r"units \(3, 4, 14\)"):
        load_ir50_backbone(path, tiny_model())


# ---------------------------------------------------------------------------------------------
# Every released family


def family_state(reference_state: dict, dataset: str, mode: str) -> dict[str, torch.Tensor]:
    """The keys the reference's model file for (dataset, mode) has, with random tensors."""
    classes = len(FAMILIES[dataset].classes)
    generator = torch.Generator().manual_seed(5)
    state = dict(reference_state)
    for vit in ("VIT_base", "VIT_cross"):
        state[f"{vit}.head.linear.weight"] = torch.randn(classes, 768, generator=generator)
        state[f"{vit}.head.linear.bias"] = torch.randn(classes, generator=generator)
    if mode == "dcs":  # two branches, S terms only: no k = 1 + tanh(theta)
        for scale in (1, 2, 3):
            del state[f"cross_attention_{scale}.theta"]
    if (dataset, mode) == ("affectnet8", "dcs"):  # built in __init__, never called in forward
        state["fusion.classifier.weight"] = torch.zeros(classes, 768 * 768)
        state["fusion.classifier.bias"] = torch.zeros(classes)
    return state


@pytest.mark.parametrize("mode", ["qcs", "dcs"])
@pytest.mark.parametrize("dataset", list(FAMILIES))
def test_every_released_family_loads(reference_state: dict, dataset: str, mode: str) -> None:
    state = family_state(reference_state, dataset, mode)
    config = FAMILIES[dataset].config(mode)
    mapped, report = load_reference_checkpoint(state, config, mode)
    with torch.device("meta"):
        expected = QCSModel(config, mode).state_dict()
    assert set(mapped) == set(expected)
    eight = len(FAMILIES[dataset].classes) == 8
    assert config.csa.residual == ("prenorm" if mode == "dcs" and eight else "normed")
    assert config.attn_proj_dropout == eight
    fusion = {k for k in report.skipped if k.startswith("fusion.")}
    assert fusion == (
        {"fusion.classifier.weight", "fusion.classifier.bias"}
        if (dataset, mode) == ("affectnet8", "dcs")
        else set()
    )
    assert torch.equal(mapped["base.vit.head.weight"], state["VIT_base.head.linear.weight"])


def test_dcs_prenorm_residual_is_the_reference_cross_module() -> None:
    """Y = X + A V, out = Y + MLP(LN2(Y)), A from LN1(X) (the 8-class DCS cross module)."""
    model = tiny_model("dcs", csa={"residual": "prenorm"}).eval()
    tokens = torch.randn(2, 3, model.config.num_tokens, model.config.dim)
    with torch.no_grad():
        ours = model.cross_logits(tokens)
        refined = []
        for csa, x in zip(model.csa, tokens.split(model.config.tokens_per_scale, 2), strict=True):
            q, v = csa.proj(csa.norm1(x)).chunk(2, dim=-1)
            y = x + csa.attention_map(q, model.pairs).unsqueeze(-1) * v
            refined.append(y + csa.mlp(csa.norm2(y)))
        expected = model.cross_vit((tokens + torch.cat(refined, 2)).flatten(0, 1))
        torch.testing.assert_close(ours, expected.unflatten(0, (2, 3)), rtol=0, atol=1e-6)
        # The QCS models' LayerNorm residual is a different function of the same weights.
        normed = tiny_model("dcs").eval()
        normed.load_state_dict(model.state_dict())
        x = tokens[:, :, : model.config.tokens_per_scale]
        assert (normed.csa[0](x, model.pairs) - model.csa[0](x, model.pairs)).abs().max() > 0.1


def test_backbone_only_init_takes_any_head(reference_state: dict) -> None:
    """The paper's AffectNet-8 -> RAF-DB init: an 8-class checkpoint into a 7-class model."""
    state = family_state(reference_state, "affectnet8", "qcs")
    config = FAMILIES["rafdb"].config("qcs")
    with pytest.raises(WeightsError, match=r"VIT_base\.head\.linear\.weight"):
        load_reference_checkpoint(state, config)
    mapped, report = load_reference_checkpoint(state, config, "qcs", parts="backbone")
    assert mapped and all(k.startswith("base.backbone.") for k in mapped)
    assert report.skipped["VIT_base.head.linear.weight"] == "outside the requested parts (backbone)"
    assert torch.equal(mapped["base.backbone.stem.0.weight"], state["ir_back.input_layer.0.weight"])


def test_duplicate_keys_name_both(reference_state: dict) -> None:
    state = {**reference_state, "module.VIT_base.cls_token": torch.zeros(1, 1, 768)}
    with pytest.raises(WeightsError) as info:
        load_reference_checkpoint(state, get_config("paper", num_classes=7))
    message = str(info.value)
    assert "'VIT_base.cls_token' and 'module.VIT_base.cls_token' collide" in message


# ---------------------------------------------------------------------------------------------
# Reference training checkpoints: progress recorders beside the state dict, and payloads


class RecorderMeter_loss:
    """Like the reference's recorder: numpy arrays, pickled as a class of its `__main__`."""

    def __init__(self, epochs: int) -> None:
        self.total_epoch = epochs
        self.epoch_losses = np.zeros((epochs, 4), dtype=np.float32)
        self.y_pred = np.arange(7)


def _save_as_main(obj: dict, path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """torch.save with the recorder class living in `__main__`, as in the reference script."""
    monkeypatch.setattr(RecorderMeter_loss, "__module__", "__main__")
    monkeypatch.setattr(sys.modules["__main__"], "RecorderMeter_loss", RecorderMeter_loss, False)
    torch.save(obj, path)


# Our names -> the reference's: the inverse of the mapping, to write a small model the way the
# reference's training script would (any configuration with the paper's module layout).
_TO_REFERENCE = [
    (r"base\.backbone\.stem\.(.+)", lambda m: f"ir_back.input_layer.{m[1]}"),
    (
        r"base\.backbone\.stages\.(\d)\.(\d+)\.(residual|shortcut)\.(.+)",
        lambda m: (
            f"ir_back.body{int(m[1]) + 1}.{m[2]}."
            f"{ {'residual': 'res_layer', 'shortcut': 'shortcut_layer'}[m[3]] }.{m[4]}"
        ),
    ),
    (r"base\.tokens\.(\d)\.downsample\.(.+)", lambda m: f"conv{int(m[1]) + 1}.{m[2]}"),
    (r"base\.tokens\.0\.embed\.(.+)", lambda m: f"embed_q.{m[1]}"),
    (r"base\.tokens\.1\.embed\.(.+)", lambda m: f"embed_k.{m[1]}"),
    (r"base\.tokens\.2\.embed\.0\.(.+)", lambda m: f"embed_v.proj.{m[1]}"),
    (r"base\.vit\.head\.(.+)", lambda m: f"VIT_base.head.linear.{m[1]}"),
    (r"base\.vit\.(.+)", lambda m: f"VIT_base.{m[1]}"),
    (r"cross_vit\.head\.(.+)", lambda m: f"VIT_cross.head.linear.{m[1]}"),
    (r"cross_vit\.(.+)", lambda m: f"VIT_cross.{m[1]}"),
    (r"csa\.(\d)\.(.+)", lambda m: f"cross_attention_{int(m[1]) + 1}.{m[2]}"),
]


def reference_format(model: QCSModel) -> dict[str, torch.Tensor]:
    out = {}
    for name, tensor in model.state_dict().items():
        rule = next(r for r in _TO_REFERENCE if re.fullmatch(r[0], name))
        out[rule[1](re.fullmatch(rule[0], name))] = tensor
    return out


SMALL_REFERENCE = get_config("tiny", num_classes=7)  # RAF-DB's 7 classes, a CPU-sized network


@pytest.fixture
def tiny_families(monkeypatch: pytest.MonkeyPatch) -> None:
    """The released families built at `tiny` size, so conversion tests stay fast."""
    monkeypatch.setattr(
        ReferenceFamily,
        "config",
        lambda self, mode: get_config("tiny", num_classes=len(self.classes)),
    )


@pytest.fixture(scope="module")
def reference_file(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, QCSModel]:
    """A reference training checkpoint as the authors' script writes it (7 classes), and the
    model whose weights it holds."""
    torch.manual_seed(4)
    model = QCSModel(SMALL_REFERENCE, "qcs").eval()
    with torch.no_grad():
        for buffer in model.buffers():
            buffer.add_(1)  # BatchNorm statistics that differ from a fresh model's
    path = tmp_path_factory.mktemp("reference") / "raf-db-model_best.pth"
    with pytest.MonkeyPatch.context() as monkeypatch:
        _save_as_main(
            {
                "epoch": 37,
                "state_dict": collections.OrderedDict(
                    ("module." + k, v) for k, v in reference_format(model).items()
                ),
                "best_acc": torch.tensor(92.5),
                "optimizer": {"state": {}, "param_groups": [{"lr": 3e-6, "rho": 0.05}]},
                "recorder_m": RecorderMeter_loss(200),
                "recorder": RecorderMeter_loss(200),
            },
            path,
            monkeypatch,
        )
    with pytest.raises(pickle.UnpicklingError):  # what made such files unusable until now
        torch.load(path, weights_only=True)
    return path, model


def test_recorder_objects_are_read_inertly(reference_file: tuple[Path, QCSModel]) -> None:
    path, model = reference_file
    state, report = load_reference_checkpoint(path, SMALL_REFERENCE)
    assert "__main__.RecorderMeter_loss" in report.ignored
    assert "never run" in report.summary()
    ours = model.state_dict()
    assert set(state) == set(ours) and all(torch.equal(state[k], ours[k]) for k in ours)


def _payloads(marker: Path) -> dict[str, object]:
    code = f"open({str(marker)!r}, 'w').write('ran')"
    return {
        "exec": (exec, (code,)),
        "eval": (eval, (code,)),
        "os.system": (os.system, (f"touch {marker}",)),
        "subprocess": (subprocess.Popen, (["touch", str(marker)],)),
    }


@pytest.mark.parametrize("payload", ["exec", "eval", "os.system", "subprocess"])
def test_code_in_a_checkpoint_is_refused_and_never_runs(payload: str, tmp_path: Path) -> None:
    marker = tmp_path / "payload-ran"
    reduce = _payloads(marker)[payload]

    class Payload:
        def __reduce__(self):
            return reduce

    path = tmp_path / "evil.pth"
    torch.save({"state_dict": {"w": torch.zeros(2)}, "recorder": Payload()}, path)
    with pytest.raises(WeightsError, match=r"evil\.pth: refused: it names .*nothing was called"):
        load_reference_checkpoint(path, get_config("tiny"))
    with pytest.raises(WeightsError, match="refused"):
        load_ir50_backbone(path, IRBackbone((3, 4, 14), (4, 8, 16)))
    legacy = tmp_path / "legacy.pth"  # a plain pickle, not torch's zip archive
    legacy.write_bytes(pickle.dumps({"state_dict": Payload()}))
    with pytest.raises(WeightsError, match=r"legacy\.pth: refused: a legacy") as info:
        load_reference_checkpoint(legacy, get_config("tiny"))
    assert "weights_only` set to `False`" not in str(info.value) and "\n" not in str(info.value)
    assert not marker.exists()


def _touch_marker(path: str) -> None:
    Path(path).write_text("ran")


def test_unknown_callables_are_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A callable outside the allow-list is refused by name, never called (issue 30: it used
    to be read as an inert placeholder; tests/test_unpickle.py has the other variants)."""
    marker = tmp_path / "called"

    class Recorder:
        def __reduce__(self):
            return (_touch_marker, (str(marker),))

    monkeypatch.setattr(sys.modules[__name__], "_touch_marker", _touch_marker)
    path = tmp_path / "ckpt.pth"
    torch.save({"state_dict": {"w": torch.zeros(2)}, "recorder": Recorder()}, path)
    with pytest.raises(WeightsError, match=rf"refused: it names {__name__}\._touch_marker"):
        load_reference_checkpoint(path, get_config("tiny"))
    assert not marker.exists()


# ---------------------------------------------------------------------------------------------
# qcsfer convert, direct use, and the init of a training run


def test_convert_writes_our_format_with_classes_and_provenance(
    reference_file: tuple[Path, QCSModel],
    tiny_families: None,
    tmp_path: Path,
    capsys: pytest.CaptureFixture,
) -> None:
    path, model = reference_file
    out = tmp_path / "rafdb-qcs.safetensors"
    assert main(["convert", str(path), "--dataset", "rafdb", "--out", str(out)]) == 0
    assert "ignored pickled objects" in capsys.readouterr().out
    converted, card = load_weights(out)
    assert card.classes == FAMILIES["rafdb"].classes
    assert card.classes[0] == "surprise" and card.classes[-1] == "neutral"
    assert card.preprocessing.image_size == 224 and not card.preprocessing.grayscale
    assert card.preprocessing.mean == pytest.approx((0.485, 0.456, 0.406))
    assert card.mode == "qcs" and card.network == "training"
    assert card.metrics["published_test"]["accuracy"] == pytest.approx(0.925)
    assert card.provenance["source_file"] == path.name
    assert card.provenance["source_sha256"] == file_sha256(path)
    images = torch.randn(2, 3, 48, 48)
    with torch.no_grad():
        assert torch.equal(converted.base(images), model.base(images))


def test_commands_take_reference_checkpoints_or_say_how(
    reference_file: tuple[Path, QCSModel], tiny_families: None, capsys: pytest.CaptureFixture
) -> None:
    path, _ = reference_file
    assert main(["info", str(path)]) == 2
    error = capsys.readouterr().err
    assert f"qcsfer convert {path} --dataset" in error
    assert "--reference-dataset" in error
    assert main(["info", str(path), "--reference-dataset", "rafdb"]) == 0
    assert "classes (7): surprise, fear" in capsys.readouterr().out
    cached = list((Path(os.environ["QCSFER_CACHE"]) / "reference").glob("*.json"))
    assert len(cached) == 1 and json.loads(cached[0].read_text())["mode"] == "qcs"


def test_training_init_from_the_backbone_of_a_reference(
    reference_file: tuple[Path, QCSModel],
) -> None:
    path, source = reference_file
    model = tiny_model(num_classes=8)  # a head of another size
    head = model.base.vit.head.weight.clone()
    initialize(model, InitConfig(reference=str(path), reference_parts="backbone"))
    assert torch.equal(model.base.vit.head.weight, head)
    theirs = source.base.backbone.state_dict()
    for name, tensor in model.base.backbone.state_dict().items():
        assert torch.equal(tensor, theirs[name]), name


@pytest.mark.parametrize("dataset", list(FAMILIES))
def test_paper_recipes_reproduce_the_reference(dataset: str) -> None:
    recipe = load_config(REPO / "configs" / f"{dataset}_paper.yaml", [])
    assert recipe.precision == "fp32"
    model = recipe.model_config(len(FAMILIES[dataset].classes))
    assert model.bn_per_branch  # the reference's sequential BatchNorm calls
    # Apart from dropout rates and BatchNorm calls, the released models' exact architecture.
    assert model.replace(bn_per_branch=False, cross_dropout=0.0) == FAMILIES[dataset].config("qcs")
