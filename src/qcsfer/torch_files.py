"""PyTorch checkpoint files seen from outside: their signature, and torch's refusals in one line.

Kept free of torch at import time so the command line can recognise a checkpoint (and say how
to convert it) without paying for importing torch.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Any

ZIP_START = b"PK\x03\x04"  # torch.save's archive format (torch >= 1.6)
LEGACY_START = b"\x80"  # a bare pickle: the legacy format, or a pickle that is not torch's
_BOILERPLATE = ("Weights only load failed", "Please file an issue", "Check the documentation")


def file_start(path: str | os.PathLike[str]) -> bytes:
    """The first four bytes of a file (b"" when it is empty); OSError when it cannot be read."""
    with open(path, "rb") as file:
        return file.read(4)


def not_a_torch_file(path: str | Path) -> str | None:
    """Why `path` cannot be a PyTorch checkpoint at all (empty, another format), else None."""
    try:
        head = file_start(path)
    except OSError as exc:
        return exc.strerror or str(exc)
    if not head:
        return "empty file (0 bytes)"
    if not head.startswith((ZIP_START, LEGACY_START)):
        return "not a PyTorch file (neither a zip archive nor a pickle)"
    return None


def load_tensors_only(path: str | os.PathLike[str]) -> Any:
    """`torch.load(weights_only=True)` on the CPU, without its pickle-protocol warning.

    torch warns about protocol-4 legacy pickles just before refusing them; the caller turns
    the refusal into one clear line, and the warning would only bury it.
    """
    import torch

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Detected pickle protocol")
        return torch.load(path, map_location="cpu", weights_only=True)


def torch_refusal(exc: Exception) -> str:
    """torch.load's complaint in one line, without its boilerplate: a paragraph that suggests
    weights_only=False or allowlisting the global, never to be done for a file that names code."""
    text = str(exc)
    _, marker, detail = text.partition("WeightsUnpickler error:")
    lines = (line.strip() for line in (detail if marker else text).splitlines())
    kept = " ".join(line for line in lines if line and not line.startswith(_BOILERPLATE))
    return kept.partition(" Please use ")[0] or type(exc).__name__
