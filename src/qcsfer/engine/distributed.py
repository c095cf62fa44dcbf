"""Processes of one run: the process group, a graceful stop shared by every rank, and the seed
of every step.

torchrun sets RANK/WORLD_SIZE/LOCAL_RANK; a single process needs none of it and every
collective below is then a no-op.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch
import torch.distributed as dist

from ..exits import Terminated
from .device import select_device

log = logging.getLogger("qcsfer.train")


@dataclass
class Distributed:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    def reduce(
        self, tensor: torch.Tensor, op: Literal["sum", "min", "max"] = "sum"
    ) -> torch.Tensor:
        """`tensor` combined over all ranks in place (sum, min or max); itself when alone."""
        if self.enabled:
            dist.all_reduce(tensor, op=getattr(dist.ReduceOp, op.upper()))
        return tensor


def init_distributed(device_type: str) -> Distributed:
    """gloo on CPU, NCCL on GPU."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size == 1:
        return Distributed()
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device_type == "cuda" else "gloo")
    return Distributed(
        dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0"))
    )


def start_processes(device_name: str) -> tuple[Distributed, torch.device]:
    """This process's place in the run and its device (cuda:LOCAL_RANK under torchrun)."""
    dd = init_distributed(select_device(device_name).type)
    device = select_device(device_name, dd.local_rank)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    return dd, device


@contextmanager
def process_group(dd: Distributed) -> Iterator[None]:
    """Tears the process group down at the end; after a finished run only once every rank is
    done, so no rank closes its connections while another still writes files."""
    finished = False
    try:
        yield
        finished = True
    finally:
        if dd.enabled and dist.is_initialized():
            if finished:
                dist.barrier()
            dist.destroy_process_group()


def step_seed(seed: int, epoch: int, step: int, rank: int) -> int:
    """A distinct, reproducible seed for every (epoch, step, rank)."""
    return int(np.random.SeedSequence([seed, epoch, step, rank]).generate_state(1)[0])


class GracefulStop:
    """Ctrl-C (SIGINT/SIGTERM) asks the loop to stop at the next step boundary, never inside an
    update; the loop then writes a resumable checkpoint. A second Ctrl-C stops at once. Under
    DDP the request is shared so every rank stops at the same step."""

    def __init__(self, dd: Distributed) -> None:
        self.dd = dd
        self.flag = False
        self.signal: int | None = None
        self.previous: dict[int, Any] = {}

    def _handler(self, signum: int, frame: Any) -> None:
        if self.flag:
            raise self.interruption()
        self.flag, self.signal = True, signum
        log.warning("stop requested: finishing the current step, then saving")

    def __enter__(self) -> GracefulStop:
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self.previous[sig] = signal.signal(sig, self._handler)
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)

    def interruption(self) -> KeyboardInterrupt:
        """What to raise once stopped: Terminated for SIGTERM (exit code 143), else Ctrl-C."""
        return Terminated() if self.signal == signal.SIGTERM else KeyboardInterrupt()

    def requested(self) -> bool:
        """True on every rank once any rank was asked to stop (a collective under DDP)."""
        return bool(self.dd.reduce(torch.tensor([float(self.flag)]), "max").item())
