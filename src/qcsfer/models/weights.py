"""Weights I/O in our own format: safetensors + a JSON sidecar.

Our format keeps tensors and metadata apart so tensors never go through pickle: `NAME.safetensors`
holds the state dict, `NAME.json` beside it says how to build the network (ModelConfig, network
kind, mode), what its outputs mean (class names) and how inputs must be prepared. Loading is
strict: every tensor the network needs must be there with its shape, and nothing else.

Foreign checkpoints (the authors' reference models, POSTER++'s `ir50.pth`) are mapped onto our
modules in `models/convert.py`.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from .. import __version__
from ..io import atomic_write
from ..preprocessing import Preprocessing
from .base import BaseNetwork
from .configs import ModelConfig
from .qcs import TOPOLOGY, QCSModel

FORMAT = "qcsfer-weights"
FORMAT_VERSION = 1
NETWORKS = ("base", "training")  # BaseNetwork state dict, or the whole QCSModel
_LISTED = 20  # keys quoted per category in an error message


class WeightsError(ValueError):
    """A weights file or checkpoint that cannot be loaded as asked; the message names the file."""


def weights_paths(path: str | os.PathLike[str]) -> tuple[Path, Path]:
    """(tensors, sidecar) for a weights path given as either file of the pair."""
    path = Path(path)
    if path.suffix == ".json":
        return path.with_suffix(".safetensors"), path
    return path, path.with_suffix(".json")


def unwrap_module(model: nn.Module) -> nn.Module:
    """The network inside DistributedDataParallel / torch.compile wrappers."""
    for attribute in ("_orig_mod", "module"):
        inner = getattr(model, attribute, None)
        if isinstance(inner, nn.Module):
            return unwrap_module(inner)
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
    model = unwrap_module(model_or_base)
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
    problems = mismatch_report(
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


def _listing(title: str, items: list[str]) -> str:
    shown = items[:_LISTED]
    more = f"\n    ... and {len(items) - len(shown)} more" if len(items) > len(shown) else ""
    return f"  {title} ({len(items)}):\n" + "\n".join(f"    {s}" for s in shown) + more


def mismatch_report(
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
