"""Files of networks converted from other formats: safetensors with a JSON card in the header.

A converted backbone (faceres) or detector (BlazeFace) travels as one file: its tensors, and
under one header key the card saying where they come from (package, version, source sha256,
input format, licence) and, for a detector, its shape.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from ..errors import WeightsError
from ..io import atomic_write


def write_converted(
    out: str | os.PathLike[str], state: dict[str, torch.Tensor], key: str, card: dict[str, Any]
) -> Path:
    """Write `state` with `card` under header `key`, atomically; returns the path."""
    metadata = {key: json.dumps(card, sort_keys=True)}
    return atomic_write(out, lambda tmp: save_file(state, str(tmp), metadata=metadata))


def read_converted_card(path: str | os.PathLike[str], key: str, remedy: str) -> dict[str, Any]:
    """The card under header `key`; a clear error (ending with `remedy`) for any other file."""
    try:
        with safe_open(str(path), "pt") as f:
            metadata = f.metadata() or {}
    except (SafetensorError, OSError) as e:
        raise WeightsError(f"{path}: not a readable safetensors file ({e})") from None
    if key not in metadata:
        raise WeightsError(f"{path}: {remedy}")
    try:
        return json.loads(metadata[key])
    except json.JSONDecodeError as e:
        raise WeightsError(f"{path}: corrupt {key!r} metadata ({e})") from None
