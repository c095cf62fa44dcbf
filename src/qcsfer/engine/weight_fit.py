"""Starting weights that do not fit the run's model, said in one line instead of torch's
hundred lines of "size mismatch": which parts differ (configuration and tensors) and what can
still be loaded (the backbone alone, when it fits)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from ..errors import TrainingError


def differing_tensors(
    target: Mapping[str, torch.Tensor], source: Mapping[str, torch.Tensor]
) -> list[str]:
    """Names of tensors missing on either side or of another shape."""
    names = sorted(set(target) | set(source))
    return [
        name
        for name in names
        if name not in target or name not in source or target[name].shape != source[name].shape
    ]


def _flat(config: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in config.items():
        if isinstance(value, Mapping):
            flat.update(_flat(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = list(value) if isinstance(value, tuple) else value
    return flat


def config_differences(source: Mapping[str, Any], target: Mapping[str, Any]) -> list[str]:
    """'num_classes: 8 in the file, 7 in this run' for each architecture setting that differs."""
    theirs, ours = _flat(source), _flat(target)
    return [
        f"{key}: {theirs.get(key)!r} in the file, {ours.get(key)!r} in this run"
        for key in sorted(set(theirs) | set(ours))
        if theirs.get(key) != ours.get(key)
    ]


def _parts(names: list[str]) -> str:
    """'base.vit (2), cross_vit (2)': the modules the differing tensors belong to."""
    counts = Counter(".".join(name.split(".")[:2]) for name in names)
    return ", ".join(f"{part} ({n})" for part, n in sorted(counts.items()))


def load_fitting(
    target: nn.Module,
    state: Mapping[str, torch.Tensor],
    source: str,
    source_config: Mapping[str, Any] | None = None,
    option: str = "init.weights",
) -> None:
    """`target.load_state_dict(state)`, or a TrainingError naming what differs and the way on."""
    own = target.state_dict()
    differing = differing_tensors(own, state)
    if not differing:
        target.load_state_dict(state)
        return
    said = []
    config = getattr(target, "config", None)
    if source_config is not None and config is not None:
        said = config_differences(source_config, config.to_dict())
    backbone_fits = not any(name.startswith(("backbone.", "base.backbone.")) for name in differing)
    if backbone_fits and option != "init.backbone_from":
        way = (
            f"to start from its IR backbone alone (any class count), use --set "
            f"init.backbone_from={source} instead of {option}"
        )
    else:
        way = "its backbone differs too: start from weights of this run's model configuration"
    raise TrainingError(
        f"{option}={source} does not fit this run's model"
        + (f" ({'; '.join(said)})" if said else "")
        + f": {len(differing)} tensors differ, in {_parts(differing)}; {way}"
    )
