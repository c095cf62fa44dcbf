"""Foreign checkpoints mapped onto our modules: the authors' reference QCS models, POSTER++'s
`ir50.pth` (MS-Celeb-1M IR-50).

Like timm's `checkpoint_filter_fn`, the mapping lives beside the models and nowhere else. These
files are pickles: they are read with `weights_only=True`, or, when they also pickle other
objects (the reference's progress recorders), by `models.unpickle`, which runs nothing and keeps
only tensors. Their keys are renamed onto our modules, parameters the reference builds but never
uses are skipped by name and reported, and anything else that does not fit is an error naming
the keys.
"""

from __future__ import annotations

import dataclasses
import os
import pickle
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn

from ..errors import UsageError
from ..torch_files import (
    LEGACY_START,
    file_start,
    load_tensors_only,
    not_a_torch_file,
    torch_refusal,
)
from .backbone import IRBackbone
from .base import BaseNetwork
from .configs import ModelConfig
from .qcs import Mode, QCSModel
from .unpickle import UnsafeCheckpointError, load_restricted
from .weights import WeightsError, mismatch_report, unwrap_module

IR50_UNITS = (3, 4, 14, 3)  # IR-50 units per stage; stage 4 is not used here
_LISTED = 20  # keys quoted in an error message

Parts = Literal["all", "backbone"]  # what of a reference checkpoint to load
PARTS: dict[str, str] = {"all": "", "backbone": "base.backbone."}  # part -> our name prefix


@dataclass(frozen=True)
class LoadReport:
    """What a foreign checkpoint contributed: nothing is dropped without appearing here."""

    source: str
    loaded: dict[str, str]  # our name -> the checkpoint's name
    skipped: dict[str, str] = field(default_factory=dict)  # checkpoint name -> why unused
    defaulted: tuple[str, ...] = ()  # BatchNorm counters absent from the checkpoint, set to 0
    ignored: tuple[str, ...] = ()  # classes of pickled non-tensor objects, read inertly

    def summary(self) -> str:
        lines = [f"{self.source}: loaded {len(self.loaded)} tensors"]
        reasons: dict[str, int] = {}
        for reason in self.skipped.values():
            reasons[reason] = reasons.get(reason, 0) + 1
        lines += [f"  skipped {n}: {reason}" for reason, n in reasons.items()]
        if self.defaulted:
            lines.append(f"  {len(self.defaulted)} num_batches_tracked absent, set to 0")
        if self.ignored:
            lines.append(f"  ignored pickled objects (never run): {', '.join(self.ignored)}")
        return "\n".join(lines)


def _torch_load(path: str | os.PathLike[str]) -> tuple[Any, tuple[str, ...]]:
    """(contents, classes read as inert placeholders) of a pickle checkpoint; never runs code.

    weights_only=True first; a file it refuses is read again by the restricted unpickler,
    which refuses in turn any global outside its allow-list (see `models.unpickle`).
    """
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"{path}: no such checkpoint file")
    if problem := not_a_torch_file(path):
        raise WeightsError(f"{path}: not a readable PyTorch checkpoint: {problem}")
    try:
        return load_tensors_only(path), ()
    except pickle.UnpicklingError as exc:
        refusal = torch_refusal(exc)
    except Exception as exc:  # corrupt archive, truncated file
        raise WeightsError(
            f"{path}: not a readable PyTorch checkpoint: {torch_refusal(exc)}"
        ) from exc
    if file_start(path).startswith(LEGACY_START):  # the restricted reader reads zip archives only
        raise WeightsError(
            f"{path}: refused: a legacy (non-zip) PyTorch checkpoint that weights_only=True "
            f"does not read ({refusal}), and the restricted reader reads zip checkpoints only. "
            "Re-save only its state_dict with torch.save."
        )
    try:
        obj, opaque = load_restricted(path)
    except UnsafeCheckpointError as exc:
        raise WeightsError(f"{path}: refused: {exc}") from exc
    except pickle.UnpicklingError as exc:
        raise WeightsError(
            f"{path}: refused: it pickles objects other than tensors, which weights_only=True "
            f"does not unpickle ({refusal}), and the restricted reader cannot read it ({exc}). "
            "Re-save only its state_dict with torch.save."
        ) from exc
    return obj, tuple(opaque)


def _state_dict_of(obj: Any, where: str) -> dict[str, torch.Tensor]:
    """The tensors of a checkpoint: under 'state_dict' if nested, 'module.' prefixes removed."""
    if isinstance(obj, Mapping) and isinstance(obj.get("state_dict"), Mapping):
        obj = obj["state_dict"]
    if not isinstance(obj, Mapping) or not obj:
        raise WeightsError(f"{where}: no state dict found (expected a mapping of name -> tensor)")
    bad = [
        str(k) for k, v in obj.items() if not isinstance(k, str) or not isinstance(v, torch.Tensor)
    ]
    if bad:
        raise WeightsError(
            f"{where}: not a state dict; entries that are not tensors: {bad[:_LISTED]}"
        )
    state: dict[str, torch.Tensor] = {}
    origin: dict[str, str] = {}
    for key, value in obj.items():
        name = key.removeprefix("module.")
        if name in state:
            raise WeightsError(
                f"{where}: keys {origin[name]!r} and {key!r} collide: both are {name!r} once the "
                "DataParallel prefix 'module.' is removed"
            )
        state[name], origin[name] = value, key
    return state


def _match(
    state: Mapping[str, torch.Tensor],
    rename: Callable[[str], str | None],
    skip: Callable[[str], str | None],
    expected: Mapping[str, tuple[int, ...]],
    where: str,
    target: str,
) -> tuple[dict[str, torch.Tensor], LoadReport]:
    """Rename a foreign state dict onto `expected`; raise listing everything that does not fit."""
    mapped: dict[str, torch.Tensor] = {}
    loaded: dict[str, str] = {}
    skipped: dict[str, str] = {}
    unmapped: list[str] = []
    unexpected: list[str] = []
    shapes = []
    for key, value in state.items():
        reason = skip(key)
        if reason:
            skipped[key] = reason
            continue
        name = rename(key)
        if name is None:
            unmapped.append(key)
        elif name in loaded:
            unexpected.append(f"{key} (-> {name}, already loaded from {loaded[name]})")
        elif name not in expected:
            unexpected.append(f"{key} (-> {name})")
        elif tuple(value.shape) != expected[name]:
            shapes.append((f"{key} (-> {name})", tuple(value.shape), expected[name]))
        else:
            mapped[name] = value
            loaded[name] = key
    absent = sorted(set(expected) - set(loaded))
    # Checkpoints from before PyTorch 0.4.1 have no BatchNorm counters: harmless, start at 0.
    defaulted = tuple(k for k in absent if k.endswith(".num_batches_tracked"))
    missing = [k for k in absent if k not in defaulted]
    problems = mismatch_report(missing, unexpected, shapes, unmapped)
    if problems:
        raise WeightsError(f"{where}: does not fit {target}:\n{problems}")
    for name in defaulted:
        mapped[name] = torch.zeros((), dtype=torch.long)
    return mapped, LoadReport(where, loaded, skipped, defaulted)


Rule = tuple[re.Pattern[str], Callable[[re.Match[str]], str]]


def _rule(pattern: str, build: Callable[[re.Match[str]], str]) -> Rule:
    return re.compile(pattern), build


def _apply(rules: list[Rule], key: str) -> str | None:
    for pattern, build in rules:
        match = pattern.fullmatch(key)
        if match:
            return build(match)
    return None


# Reference QCS model -> QCSModel. Stage and scale numbers are 1-based there, 0-based here.
_REFERENCE_RULES = [
    _rule(r"ir_back\.input_layer\.(\d+\..+)", lambda m: f"base.backbone.stem.{m[1]}"),
    _rule(
        r"ir_back\.body([123])\.(\d+)\.res_layer\.(.+)",
        lambda m: f"base.backbone.stages.{int(m[1]) - 1}.{m[2]}.residual.{m[3]}",
    ),
    _rule(
        r"ir_back\.body([123])\.(\d+)\.shortcut_layer\.(.+)",
        lambda m: f"base.backbone.stages.{int(m[1]) - 1}.{m[2]}.shortcut.{m[3]}",
    ),
    _rule(r"conv([123])\.(.+)", lambda m: f"base.tokens.{int(m[1]) - 1}.downsample.{m[2]}"),
    _rule(r"embed_q\.(\d+\..+)", lambda m: f"base.tokens.0.embed.{m[1]}"),
    _rule(r"embed_k\.0\.(.+)", lambda m: f"base.tokens.1.embed.0.{m[1]}"),
    _rule(r"embed_v\.proj\.(.+)", lambda m: f"base.tokens.2.embed.0.{m[1]}"),
    _rule(r"VIT_base\.head\.linear\.(.+)", lambda m: f"base.vit.head.{m[1]}"),
    _rule(r"VIT_base\.(.+)", lambda m: f"base.vit.{m[1]}"),
    _rule(r"VIT_cross\.head\.linear\.(.+)", lambda m: f"cross_vit.head.{m[1]}"),
    _rule(r"VIT_cross\.(.+)", lambda m: f"cross_vit.{m[1]}"),
    _rule(r"cross_attention_([123])\.(.+)", lambda m: f"csa.{int(m[1]) - 1}.{m[2]}"),
]

# Parameters the reference builds but whose outputs never reach a loss.
_REFERENCE_UNUSED = [
    (re.compile(r"ir_back\.output_layer\..+"), "IR-50 face-embedding output layer (unused)"),
    (re.compile(r"VIT_(base|cross)\.patch_embed\..+"), "ViT patch embedding (unused)"),
    (re.compile(r"VIT_(base|cross)\.eca_block\..+"), "ViT ECA block (unused)"),
    (re.compile(r"VIT_(base|cross)\.CON1\..+"), "ViT CON1 conv (unused)"),
    (re.compile(r"VIT_(base|cross)\.IRLinear[12]\..+"), "ViT IRLinear layers (unused)"),
    (re.compile(r"VIT_(base|cross)\.blocks\.\d+\.conv\..+"), "ViT block conv (unused)"),
    (re.compile(r"fusion\.classifier\..+"), "DCS fusion classifier (built, never called)"),
]


def _reference_skip(key: str) -> str | None:
    for pattern, reason in _REFERENCE_UNUSED:
        if pattern.fullmatch(key):
            return reason
    return None


def load_reference_checkpoint(
    path_or_state_dict: str | os.PathLike[str] | Mapping[str, Any],
    config: ModelConfig,
    mode: Mode = "qcs",
    parts: Parts = "all",
) -> tuple[dict[str, torch.Tensor], LoadReport]:
    """Map an authors' reference QCS or DCS checkpoint onto `QCSModel(config, mode)` names.

    Returns a state dict for `QCSModel.load_state_dict` and the report of what was loaded and
    skipped. `parts="backbone"` keeps only the IR backbone (the paper's "AffectNet-8 init": the
    checkpoint's head may then have any class count) and the state dict holds only its tensors.
    Raises WeightsError naming every key that neither maps nor is a known-unused reference
    parameter, every missing key and every shape mismatch.
    """
    if parts not in PARTS:
        raise UsageError(f"parts must be one of {sorted(PARTS)}, got {parts!r}")
    if isinstance(path_or_state_dict, Mapping):
        where, raw, ignored = "reference state dict", path_or_state_dict, ()
    else:
        where = str(path_or_state_dict)
        raw, ignored = _torch_load(path_or_state_dict)
    state = _state_dict_of(raw, where)
    with torch.device("meta"):
        target = QCSModel(config, mode)
    prefix = PARTS[parts]
    expected = {k: tuple(v.shape) for k, v in target.state_dict().items() if k.startswith(prefix)}
    has_theta = any(k.endswith(".theta") for k in expected)

    def rename(key: str) -> str | None:
        return _apply(_REFERENCE_RULES, key)

    def skip(key: str) -> str | None:
        name = rename(key)
        if name is not None and not name.startswith(prefix):
            return f"outside the requested parts ({parts})"
        if not has_theta and re.fullmatch(r"cross_attention_[123]\.theta", key):
            return (
                f"theta (k = 1 + tanh(theta)) is unused by the {mode} / {config.csa.variant} model"
            )
        return _reference_skip(key)

    mapped, report = _match(
        state, rename, skip, expected, where, f"QCSModel({config.name!r}, {mode!r}) [{parts}]"
    )
    return mapped, dataclasses.replace(report, ignored=ignored)


def load_ir50_backbone(path: str | os.PathLike[str], model: nn.Module) -> LoadReport:
    """Load POSTER++'s `ir50.pth` (MS-Celeb-1M IR-50) into the backbone of `model`, in place.

    `model` is a QCSModel, BaseNetwork or IRBackbone with the IR-50 layout (units 3, 4, 14).
    The file's flat `body.N` units are split into our stages; stage 4 (units 21-23) and the
    output layer are skipped by name and reported; anything else that does not fit raises.
    """
    model = unwrap_module(model)
    if isinstance(model, QCSModel):
        backbone, prefix = model.base.backbone, "base.backbone."
    elif isinstance(model, BaseNetwork):
        backbone, prefix = model.backbone, "backbone."
    elif isinstance(model, IRBackbone):
        backbone, prefix = model, ""
    else:
        raise TypeError(
            f"expected a QCSModel, BaseNetwork or IRBackbone, got {type(model).__name__}"
        )
    units = tuple(len(stage) for stage in backbone.stages)
    if units != IR50_UNITS[:3]:
        raise WeightsError(
            f"{path}: IR-50 weights need units {IR50_UNITS[:3]} in stages 1-3, this backbone has "
            f"{units} (use the 'paper' model configuration)"
        )
    starts = [sum(IR50_UNITS[:i]) for i in range(len(IR50_UNITS) + 1)]  # 0, 3, 7, 21, 24

    def unit(number: str) -> str | None:
        n = int(number)
        for stage in range(3):
            if starts[stage] <= n < starts[stage + 1]:
                return f"stages.{stage}.{n - starts[stage]}"
        return None

    rules = [
        _rule(r"input_layer\.(\d+\..+)", lambda m: f"stem.{m[1]}"),
        _rule(
            r"body\.(\d+)\.res_layer\.(.+)",
            lambda m: f"{unit(m[1])}.residual.{m[2]}" if unit(m[1]) else f"body.{m[1]}",
        ),
        _rule(
            r"body\.(\d+)\.shortcut_layer\.(.+)",
            lambda m: f"{unit(m[1])}.shortcut.{m[2]}" if unit(m[1]) else f"body.{m[1]}",
        ),
    ]

    def skip(key: str) -> str | None:
        if key.startswith("output_layer."):
            return "IR-50 face-embedding output layer (unused)"
        match = re.match(r"body\.(\d+)\.", key)
        if match and starts[3] <= int(match[1]) < starts[4]:
            return "IR-50 stage 4 (unused)"
        return None

    raw, ignored = _torch_load(path)
    state = _state_dict_of(raw, str(path))
    expected = {k: tuple(v.shape) for k, v in backbone.state_dict().items()}
    mapped, report = _match(
        state, lambda key: _apply(rules, key), skip, expected, str(path), "the IR-50 backbone"
    )
    backbone.load_state_dict(mapped, strict=True)
    return LoadReport(
        report.source,
        {prefix + ours: theirs for ours, theirs in report.loaded.items()},
        report.skipped,
        tuple(prefix + k for k in report.defaulted),
        ignored,
    )
