"""Weights I/O in our own format: safetensors + a JSON model card.

Our format keeps tensors and metadata apart so tensors never go through pickle: `NAME.safetensors`
holds the state dict, `NAME.json` beside it is its model card (`qcsfer.card`): how to build the
network, what its outputs mean and how inputs must be prepared. Loading is strict: every tensor
the network needs must be there with its shape, and nothing else.

Foreign checkpoints (the authors' reference models, POSTER++'s `ir50.pth`) are mapped onto our
modules in `models/convert.py`.
"""

from __future__ import annotations

import hashlib
import os
import uuid
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch import nn

from ..card import (
    ModelCard,
    Network,
    card_json,
    preprocessing_of,
    read_card,
    weights_paths,
    write_card,
)
from ..decision import DecisionRule
from ..errors import WeightsError
from ..io import atomic_write
from ..outputs import OutputError
from ..preprocessing import Preprocessing
from .base import BaseNetwork
from .configs import ModelConfig
from .qcs import QCSModel

__all__ = ["WeightsError", "load_weights", "network_card", "save_weights", "weights_paths"]
_LISTED = 20  # keys quoted per category in an error message


def unwrap_module(model: nn.Module) -> nn.Module:
    """The network inside DistributedDataParallel / torch.compile wrappers."""
    for attribute in ("_orig_mod", "module"):
        inner = getattr(model, attribute, None)
        if isinstance(inner, nn.Module):
            return unwrap_module(inner)
    return model


def file_sha256(path: Path) -> str:
    """Hex sha256 of a file, read in 4 MiB chunks."""
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            digest.update(chunk)
    return digest.hexdigest()


def network_card(
    model_or_base: nn.Module,
    *,
    classes: Iterable[str],
    preprocessing: Preprocessing | Mapping[str, Any],
    mode: str | None = None,
    decision: DecisionRule | None = None,
    metrics: Mapping[str, Mapping[str, float]] | None = None,
    provenance: Mapping[str, Any] | None = None,
) -> ModelCard:
    """The card of `model`: which network, its configuration and (for a training graph) its
    mode are read from the model itself, the rest is what the caller says. `mode` for a
    BaseNetwork: the topology it was trained in, when known. Validated; nothing is written."""
    model = unwrap_module(model_or_base)
    if isinstance(model, QCSModel):
        if mode not in (None, model.mode):
            raise WeightsError(f"mode {mode!r} for a {model.mode} training graph")
        network: Network = "training"
        mode = model.mode
    elif isinstance(model, BaseNetwork):
        network = "base"
    else:
        raise TypeError(f"expected a BaseNetwork or QCSModel, got {type(model).__name__}")
    classes = tuple(str(c) for c in classes)
    if len(classes) != model.config.num_classes:
        raise WeightsError(
            f"{len(classes)} class names for a {model.config.num_classes}-class model"
        )
    if not isinstance(preprocessing, Preprocessing):
        preprocessing = preprocessing_of(preprocessing)
    return ModelCard(
        network=network,
        model=model.config.to_dict(),
        classes=classes,
        preprocessing=preprocessing,
        mode=mode,
        decision=decision or DecisionRule(),
        metrics=dict(metrics or {}),
        provenance=dict(provenance or {}),
    )


def save_weights(model_or_base: nn.Module, path: str | os.PathLike[str], card: ModelCard) -> Path:
    """Write `path` (safetensors) and `card` beside it (`.json`) atomically; returns the tensor
    path.

    A BaseNetwork gives an inference-only file; a QCSModel keeps the whole training model
    (CSA and cross ViT too). The card must describe this model (`network_card` builds one);
    its tensor record is filled in here. Each file is written to a temporary name first and
    moved into place (tensors first, then the card that vouches for them by hash and id), so
    a reader never sees half a file.
    """
    model = unwrap_module(model_or_base)
    tensor_path, json_path = weights_paths(path)
    if tensor_path == json_path or tensor_path.suffix == ".json":
        raise WeightsError(f"{path}: the tensor file needs a suffix other than .json")
    try:
        _check_describes(card, model)
        card_json(card)  # fail before writing anything
    except WeightsError as exc:
        raise WeightsError(f"{json_path}: {exc}") from exc
    network = card.network
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    pair_id = uuid.uuid4().hex  # also in the tensor file's header: a cheap pairing check

    def write_tensors(temporary: Path) -> None:
        save_file(tensors, temporary, metadata={"format": "pt", "qcsfer": network, "id": pair_id})

    try:
        atomic_write(tensor_path, write_tensors)
    except SafetensorError as exc:  # its I/O errors (a full disk, a file-size limit) as text
        detail = str(exc).partition("I/O error: ")[2] or str(exc)
        raise OutputError(f"{tensor_path}: cannot write ({detail})") from exc
    card = card.replace(
        tensors={
            "file": tensor_path.name,
            "sha256": file_sha256(tensor_path),
            "id": pair_id,
            "count": len(tensors),
            "parameters": sum(p.numel() for p in model.parameters()),
        }
    )
    write_card(card, json_path)
    return tensor_path


def _check_describes(card: ModelCard, model: nn.Module) -> None:
    """WeightsError unless `card` is this model's: network kind, configuration, mode, classes."""
    if not isinstance(model, QCSModel | BaseNetwork):
        raise TypeError(f"expected a BaseNetwork or QCSModel, got {type(model).__name__}")
    network = "training" if isinstance(model, QCSModel) else "base"
    if card.network != network:
        raise WeightsError(f"a card for a {card.network!r} network, given a {network!r} one")
    if model_config(card) != model.config:
        raise WeightsError("the card's model configuration is not this model's")
    if isinstance(model, QCSModel) and card.mode != model.mode:
        raise WeightsError(f"the card says mode {card.mode!r}, the model is {model.mode!r}")


def model_config(card: ModelCard) -> ModelConfig:
    """The ModelConfig a card describes (here, beside the builder: the card is torch-free)."""
    try:
        config = ModelConfig.from_dict(dict(card.model))
    except (TypeError, ValueError) as exc:
        raise WeightsError(f"invalid model config: {exc}") from exc
    if config.num_classes != len(card.classes):
        raise WeightsError(f"{len(card.classes)} class names for {config.num_classes} classes")
    return config


def build_network(card: ModelCard, base_only: bool = False) -> nn.Module:
    """The (uninitialised, meta-device) network a card describes; its base network if asked."""
    config = model_config(card)
    # Built on the meta device: no time spent initialising weights about to be replaced.
    with torch.device("meta"):
        if card.network == "base" or base_only:
            return BaseNetwork(config)
        return QCSModel(config, card.mode)


def _read_tensors(tensor_path: Path, card: ModelCard, prefix: str) -> dict[str, torch.Tensor]:
    """The tensors whose names start with `prefix` (prefix removed), checked against the card.

    A whole-file read checks the file's sha256 against the card. A partial read (the base
    network of a training file) checks the id both files were written with instead, so it
    costs nothing to read a small part of a large file; cards without an id fall back to sha256.
    """
    json_path = weights_paths(tensor_path)[1]
    if not tensor_path.is_file():
        raise WeightsError(f"{tensor_path}: tensor file missing (its sidecar {json_path} exists)")
    mismatch = (
        f"{tensor_path}: contents differ from what {json_path.name} was written for "
        "({}): the pair was not saved together"
    )
    expected_id, expected_hash = card.tensors.get("id"), card.tensors.get("sha256")
    if expected_hash and not (prefix and expected_id) and file_sha256(tensor_path) != expected_hash:
        raise WeightsError(mismatch.format("sha256 mismatch"))
    try:
        with safe_open(tensor_path, framework="pt") as f:
            written_id = (f.metadata() or {}).get("id")
            names = [k for k in f.keys() if k.startswith(prefix)]  # noqa: SIM118 (not a dict)
            tensors = {k[len(prefix) :]: f.get_tensor(k) for k in names}
    except (SafetensorError, OSError, ValueError) as exc:
        raise WeightsError(f"{tensor_path}: not a readable safetensors file: {exc}") from exc
    if prefix and expected_id and written_id != expected_id:
        raise WeightsError(mismatch.format("id mismatch"))
    return tensors


def load_weights(
    path: str | os.PathLike[str], *, base_only: bool = False
) -> tuple[nn.Module, ModelCard]:
    """(model in eval mode, its card) from a file written by save_weights.

    Returns a BaseNetwork for an inference-only file and a QCSModel for a training file;
    `base_only=True` builds and reads only the BaseNetwork of either (what inference needs).
    `path` may name either file of the pair.
    """
    tensor_path, json_path = weights_paths(path)
    card = read_card(path)
    try:
        model = build_network(card, base_only)
    except WeightsError as exc:
        raise WeightsError(f"{json_path}: {exc}") from exc
    prefix = "base." if base_only and card.network == "training" else ""
    tensors = _read_tensors(tensor_path, card, prefix)
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    problems = mismatch_report(
        missing=sorted(set(expected) - set(tensors)),
        unexpected=sorted(prefix + k for k in set(tensors) - set(expected)),
        shapes=[
            (prefix + k, tuple(v.shape), expected[k])
            for k, v in tensors.items()
            if k in expected and tuple(v.shape) != expected[k]
        ],
    )
    if problems:
        kind = "BaseNetwork" if card.network == "base" else f"QCSModel ({card.mode})"
        raise WeightsError(
            f"{tensor_path}: tensors do not match the {kind} that {json_path.name} "
            f"describes:\n{problems}"
        )
    # A file may store floats in half precision (a shipped model, half the size); the network
    # computes in its own type, and assign=True would otherwise keep the file's.
    dtypes = {k: v.dtype for k, v in model.state_dict().items()}
    tensors = {k: v.to(dtypes[k]) if v.is_floating_point() else v for k, v in tensors.items()}
    model.load_state_dict(tensors, strict=True, assign=True)
    return model.eval(), card


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
