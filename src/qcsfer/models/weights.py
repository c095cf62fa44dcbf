"""Weights I/O: our files (safetensors + JSON sidecar) and the authors' reference checkpoints.

Our format keeps tensors and metadata apart so tensors never go through pickle: `NAME.safetensors`
holds the state dict, `NAME.json` beside it says how to build the network (ModelConfig, network
kind, mode), what its outputs mean (class names) and how inputs must be prepared. Loading is
strict: every tensor the network needs must be there with its shape, and nothing else.

Foreign checkpoints (the reference QCS training model, POSTER++'s `ir50.pth`) are pickles: they
are read with `weights_only=True` only, their keys are renamed onto our modules, parameters the
reference builds but never uses are skipped by name and reported, and anything else that does
not fit is an error naming the keys.
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from .. import __version__
from ..io import atomic_write
from ..preprocessing import Preprocessing
from .backbone import IRBackbone
from .base import BaseNetwork
from .configs import ModelConfig
from .qcs import TOPOLOGY, Mode, QCSModel

FORMAT = "qcsfer-weights"
FORMAT_VERSION = 1
NETWORKS = ("base", "training")  # BaseNetwork state dict, or the whole QCSModel
IR50_UNITS = (3, 4, 14, 3)  # IR-50 units per stage; stage 4 is not used here
_LISTED = 20  # keys quoted per category in an error message


class WeightsError(ValueError):
    """A weights file or checkpoint that cannot be loaded as asked; the message names the file."""


@dataclass(frozen=True)
class LoadReport:
    """What a foreign checkpoint contributed: nothing is dropped without appearing here."""

    source: str
    loaded: dict[str, str]  # our name -> the checkpoint's name
    skipped: dict[str, str] = field(default_factory=dict)  # checkpoint name -> why unused
    defaulted: tuple[str, ...] = ()  # BatchNorm counters absent from the checkpoint, set to 0

    def summary(self) -> str:
        lines = [f"{self.source}: loaded {len(self.loaded)} tensors"]
        reasons: dict[str, int] = {}
        for reason in self.skipped.values():
            reasons[reason] = reasons.get(reason, 0) + 1
        lines += [f"  skipped {n}: {reason}" for reason, n in reasons.items()]
        if self.defaulted:
            lines.append(f"  {len(self.defaulted)} num_batches_tracked absent, set to 0")
        return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# Our format


def weights_paths(path: str | os.PathLike[str]) -> tuple[Path, Path]:
    """(tensors, sidecar) for a weights path given as either file of the pair."""
    path = Path(path)
    if path.suffix == ".json":
        return path.with_suffix(".safetensors"), path
    return path, path.with_suffix(".json")


def _unwrap_module(model: nn.Module) -> nn.Module:
    """The network inside DistributedDataParallel / torch.compile wrappers."""
    for attribute in ("_orig_mod", "module"):
        inner = getattr(model, attribute, None)
        if isinstance(inner, nn.Module):
            return _unwrap_module(inner)
    return model


def _json_default(value: Any) -> Any:
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if hasattr(value, "item") and callable(value.item):  # numpy / torch scalars
        return value.item()
    if isinstance(value, set | frozenset):
        return sorted(value)
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _preprocessing(value: object, where: str) -> Preprocessing:
    """A saved preprocessing mapping, complete and valid, or WeightsError saying what is wrong."""
    if not isinstance(value, Mapping):
        raise WeightsError(
            f"{where}: metadata lacks a 'preprocessing' mapping (image_size, load_size, "
            "grayscale, mean, std): without it inputs cannot be prepared as in training"
        )
    try:
        return Preprocessing.from_dict(value)
    except ValueError as exc:
        raise WeightsError(f"{where}: invalid preprocessing: {exc}") from exc


def save_weights(
    model_or_base: nn.Module,
    path: str | os.PathLike[str],
    *,
    classes: Iterable[str],
    preprocessing: Mapping[str, Any],
    provenance: Mapping[str, Any],
) -> Path:
    """Write `path` (safetensors) and its `.json` sidecar atomically; returns the tensor path.

    A BaseNetwork gives an inference-only file; a QCSModel keeps the whole training model
    (CSA and cross ViT too). `preprocessing` must be complete (see `Preprocessing.from_dict`).
    Each file is written to a temporary name first and moved into place (tensors first, then
    the sidecar that vouches for them by hash), so a reader never sees half a file.
    """
    model = _unwrap_module(model_or_base)
    if isinstance(model, QCSModel):
        network, mode = "training", model.mode
    elif isinstance(model, BaseNetwork):
        # Inference-only: record the mode it was trained in when the provenance says it.
        network = "base"
        mode = provenance.get("mode") if provenance.get("mode") in TOPOLOGY else None
    else:
        raise TypeError(
            f"save_weights expects a BaseNetwork or QCSModel, got {type(model).__name__}"
        )
    config: ModelConfig = model.config
    classes = [str(c) for c in classes]
    if len(classes) != config.num_classes:
        raise WeightsError(f"{len(classes)} class names for a {config.num_classes}-class model")

    tensor_path, json_path = weights_paths(path)
    if tensor_path == json_path or tensor_path.suffix == ".json":
        raise WeightsError(f"{path}: the tensor file needs a suffix other than .json")
    prep = _preprocessing(preprocessing, str(json_path))
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}

    metadata: dict[str, Any] = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "qcsfer_version": __version__,
        "network": network,
        "mode": mode,
        "model": config.to_dict(),
        "classes": classes,
        "preprocessing": prep.to_dict(),
        "provenance": dict(provenance),
    }
    try:  # fail before writing anything
        json.dumps(metadata, default=_json_default)
    except (TypeError, ValueError) as exc:
        raise WeightsError(f"{json_path}: metadata is not JSON serialisable: {exc}") from exc

    def write_tensors(temporary: Path) -> None:
        save_file(tensors, temporary, metadata={"format": "pt", "qcsfer": network})
        metadata["tensors"] = {
            "file": tensor_path.name,
            "sha256": _sha256(temporary),
            "count": len(tensors),
            "parameters": sum(p.numel() for p in model.parameters()),
        }

    atomic_write(tensor_path, write_tensors)
    text = json.dumps(metadata, indent=2, default=_json_default) + "\n"
    atomic_write(json_path, lambda temporary: temporary.write_text(text, encoding="utf-8"))
    return tensor_path


def read_metadata(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The JSON sidecar of a weights file, validated (no tensors are read)."""
    tensor_path, json_path = weights_paths(path)
    if not json_path.is_file():
        raise WeightsError(
            f"{json_path}: metadata sidecar missing; {tensor_path.name} cannot be used without "
            "it (it says which network, classes and preprocessing the tensors belong to)"
        )
    try:
        metadata = json.loads(json_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise WeightsError(f"{json_path}: unreadable metadata: {exc}") from exc
    if not isinstance(metadata, dict) or metadata.get("format") != FORMAT:
        raise WeightsError(f"{json_path}: not a {FORMAT} metadata file")
    version = metadata.get("format_version")
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise WeightsError(
            f"{json_path}: format_version must be a positive integer, got {version!r}"
        )
    if version > FORMAT_VERSION:
        raise WeightsError(
            f"{json_path}: format version {version} is newer than this "
            f"qcsfer ({__version__}) reads ({FORMAT_VERSION})"
        )
    missing = [k for k in ("network", "model", "classes", "preprocessing") if k not in metadata]
    if missing:
        raise WeightsError(f"{json_path}: metadata lacks {missing}")
    classes = metadata["classes"]
    if not isinstance(classes, list) or not all(isinstance(c, str) for c in classes):
        raise WeightsError(f"{json_path}: classes must be a list of names (strings)")
    _preprocessing(metadata["preprocessing"], str(json_path))
    if metadata["network"] not in NETWORKS:
        raise WeightsError(f"{json_path}: unknown network {metadata['network']!r}")
    if metadata["network"] == "training" and metadata.get("mode") not in TOPOLOGY:
        raise WeightsError(f"{json_path}: unknown training mode {metadata.get('mode')!r}")
    return metadata


def build_from_metadata(metadata: Mapping[str, Any], where: str = "metadata") -> nn.Module:
    """The (uninitialised, meta-device) network a sidecar describes."""
    try:
        config = ModelConfig.from_dict(metadata["model"])
    except (TypeError, ValueError) as exc:
        raise WeightsError(f"{where}: invalid model config: {exc}") from exc
    if len(metadata["classes"]) != config.num_classes:
        raise WeightsError(
            f"{where}: {len(metadata['classes'])} class names for {config.num_classes} classes"
        )
    # Built on the meta device: no time spent initialising weights about to be replaced.
    with torch.device("meta"):
        if metadata["network"] == "base":
            return BaseNetwork(config)
        return QCSModel(config, metadata["mode"])


def load_weights(
    path: str | os.PathLike[str], *, base_only: bool = False
) -> tuple[nn.Module, dict[str, Any]]:
    """(model in eval mode, metadata) from a file written by save_weights.

    Returns a BaseNetwork for an inference-only file and a QCSModel for a training file
    (`base_only=True`: its BaseNetwork). `path` may name either file of the pair.
    """
    tensor_path, json_path = weights_paths(path)
    metadata = read_metadata(path)
    model = build_from_metadata(metadata, str(json_path))
    if not tensor_path.is_file():
        raise WeightsError(f"{tensor_path}: tensor file missing (its sidecar {json_path} exists)")
    expected_hash = metadata.get("tensors", {}).get("sha256")
    if expected_hash and _sha256(tensor_path) != expected_hash:
        raise WeightsError(
            f"{tensor_path}: contents differ from what {json_path.name} was written for "
            "(sha256 mismatch): the pair was not saved together"
        )
    try:
        tensors = load_file(tensor_path)
    except (SafetensorError, OSError, ValueError) as exc:
        raise WeightsError(f"{tensor_path}: not a readable safetensors file: {exc}") from exc
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    problems = _mismatch_report(
        missing=sorted(set(expected) - set(tensors)),
        unexpected=sorted(set(tensors) - set(expected)),
        shapes=[
            (k, tuple(v.shape), expected[k])
            for k, v in tensors.items()
            if k in expected and tuple(v.shape) != expected[k]
        ],
    )
    if problems:
        kind = "BaseNetwork" if metadata["network"] == "base" else f"QCSModel ({metadata['mode']})"
        raise WeightsError(
            f"{tensor_path}: tensors do not match the {kind} that {json_path.name} "
            f"describes:\n{problems}"
        )
    model.load_state_dict(tensors, strict=True, assign=True)
    model.eval()
    if base_only and isinstance(model, QCSModel):
        return model.base, metadata
    return model, metadata


# ---------------------------------------------------------------------------------------------
# Foreign checkpoints


def _listing(title: str, items: list[str]) -> str:
    shown = items[:_LISTED]
    more = f"\n    ... and {len(items) - len(shown)} more" if len(items) > len(shown) else ""
    return f"  {title} ({len(items)}):\n" + "\n".join(f"    {s}" for s in shown) + more


def _mismatch_report(
    missing: list[str],
    unexpected: list[str],
    shapes: list[tuple[str, tuple[int, ...], tuple[int, ...]]],
    unmapped: list[str] | None = None,
) -> str:
    """Human-readable list of everything that does not fit; empty when all fits."""
    parts = []
    if unmapped:
        parts.append(_listing("keys with no counterpart in this model", unmapped))
    if unexpected:
        parts.append(_listing("unexpected keys", unexpected))
    if missing:
        parts.append(_listing("missing keys", missing))
    if shapes:
        parts.append(
            _listing(
                "shape mismatches (checkpoint vs model)",
                [f"{k}: {tuple(a)} vs {tuple(b)}" for k, a, b in shapes],
            )
        )
    return "\n".join(parts)


def _torch_load(path: str | os.PathLike[str]) -> Any:
    """Read a pickle checkpoint with weights_only=True, turning a refusal into a clear error."""
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"{path}: no such checkpoint file")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise WeightsError(
            f"{path}: refused: it pickles objects other than tensors and plain containers, "
            "which weights_only=True does not unpickle (they could run code). Re-save only its "
            f"state_dict with torch.save. Details: {exc}"
        ) from exc
    except Exception as exc:  # corrupt archive, truncated file, not a checkpoint at all
        raise WeightsError(f"{path}: not a readable PyTorch checkpoint: {exc}") from exc


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
    for key, value in obj.items():
        name = key.removeprefix("module.")
        if name in state:
            raise WeightsError(f"{where}: {key!r} and {name!r} both present (DataParallel prefix)")
        state[name] = value
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
        elif name not in expected or name in loaded:
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
    problems = _mismatch_report(missing, unexpected, shapes, unmapped)
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
) -> tuple[dict[str, torch.Tensor], LoadReport]:
    """Map an authors' reference QCS checkpoint onto `QCSModel(config, mode)` names.

    Returns a state dict for `QCSModel.load_state_dict(..., strict=True)` and the report of
    what was loaded and skipped. Raises WeightsError naming every key that neither maps nor is
    a known-unused reference parameter, every missing key and every shape mismatch.
    """
    if isinstance(path_or_state_dict, Mapping):
        where, raw = "reference state dict", path_or_state_dict
    else:
        where, raw = str(path_or_state_dict), _torch_load(path_or_state_dict)
    state = _state_dict_of(raw, where)
    with torch.device("meta"):
        target = QCSModel(config, mode)
    expected = {k: tuple(v.shape) for k, v in target.state_dict().items()}
    has_theta = any(k.endswith(".theta") for k in expected)

    def skip(key: str) -> str | None:
        if not has_theta and re.fullmatch(r"cross_attention_[123]\.theta", key):
            return (
                f"theta (k = 1 + tanh(theta)) is unused by the {mode} / {config.csa.variant} model"
            )
        return _reference_skip(key)

    return _match(
        state,
        lambda key: _apply(_REFERENCE_RULES, key),
        skip,
        expected,
        where,
        f"QCSModel({config.name!r}, {mode!r})",
    )


def load_ir50_backbone(path: str | os.PathLike[str], model: nn.Module) -> LoadReport:
    """Load POSTER++'s `ir50.pth` (MS-Celeb-1M IR-50) into the backbone of `model`, in place.

    `model` is a QCSModel, BaseNetwork or IRBackbone with the IR-50 layout (units 3, 4, 14).
    The file's flat `body.N` units are split into our stages; stage 4 (units 21-23) and the
    output layer are skipped by name and reported; anything else that does not fit raises.
    """
    model = _unwrap_module(model)
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

    state = _state_dict_of(_torch_load(path), str(path))
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
    )
