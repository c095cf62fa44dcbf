"""Where and in which precision the networks run."""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext

import torch

from ..errors import DeviceError

KNOWN = "use cpu, cuda, cuda:N, mps or auto"


def select_device(name: str, local_rank: int = 0) -> torch.device:
    """The one resolver of device names: "auto" is CUDA when available, else the CPU.

    A device is checked here, before any work, rather than failing at the first tensor moved
    there (torch's RuntimeError, deep inside a run): CUDA and Apple's MPS must be available,
    and device types qcsfer does not run on are refused by name.
    """
    if name == "auto":
        return torch.device(f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as exc:  # torch's message lists every device type it knows
        raise DeviceError(f"unknown device {name!r}; {KNOWN}") from exc
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise DeviceError(f"device {name!r} requested but CUDA is not available")
        if device.index is None:
            device = torch.device(f"cuda:{local_rank}")
    elif device.type == "mps":
        if not torch.backends.mps.is_available():
            raise DeviceError(
                f"device {name!r} requested but MPS (Apple silicon GPU) is not available on this "
                "machine or in this PyTorch build; use cpu"
            )
    elif device.type != "cpu":
        raise DeviceError(f"device {name!r}: qcsfer does not run on {device.type}; {KNOWN}")
    return device


def autocast(device: torch.device, precision: str) -> AbstractContextManager[None]:
    """Mixed precision for "bf16"/"fp16" (fp16 on CUDA only); nothing for "fp32"."""
    if precision == "fp32":
        return nullcontext()
    if precision == "fp16" and device.type != "cuda":
        raise DeviceError("fp16 needs CUDA; use bf16 on CPU")
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device.type, dtype=dtype)
