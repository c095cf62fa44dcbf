"""The training checkpoint: its format, atomic saving, loading, and the model it holds.

A checkpoint is a torch file of plain containers and tensors (loaded with weights_only=True,
so it cannot run code): the run's configuration and classes, the model, optimiser, schedule
and gradient-scaler states, and where the run stands (`RunState`). last.pt resumes a run
exactly; best.pt is the epoch with the best validation accuracy; tools/average_checkpoints.py
writes weights-only checkpoints (no optimiser state) that tools/ship_model.py packages.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..config import TrainConfig, from_dict, save_config, to_dict
from ..errors import TrainingError
from ..io import atomic_write
from ..models.qcs import QCSModel
from ..outputs import OutputError, reason, writing
from ..torch_files import load_tensors_only, not_a_torch_file, torch_refusal
from .epoch_record import EpochRecord

CHECKPOINT_FORMAT = "qcsfer-checkpoint"
CHECKPOINT_VERSION = 1
RESUME_ONLY = ("optimizer", "scheduler", "scaler", "epoch_loss")  # not needed for the weights


@dataclass
class RunState:
    """Where a run stands: the next batch to train, and what the finished epochs measured."""

    epoch: int = 0  # the epoch in progress (= epochs finished)
    batch: int = 0  # the next batch of that epoch
    step: int = 0  # optimiser steps taken in the whole run
    history: list[EpochRecord] = field(default_factory=list)  # one per finished epoch
    best: float = -1.0  # the best validation accuracy so far
    epoch_loss: list[float] = field(default_factory=lambda: [0.0, 0])  # sum, count this epoch

    def add_step(self, loss: float) -> None:
        self.batch, self.step = self.batch + 1, self.step + 1
        self.epoch_loss = [self.epoch_loss[0] + loss, self.epoch_loss[1] + 1]

    def finish_epoch(self, record: EpochRecord) -> bool:
        """Records the epoch and moves to the next; True when validation accuracy improved."""
        self.history.append(record)
        improved = record.val_accuracy > self.best
        self.best = max(self.best, record.val_accuracy)
        self.epoch, self.batch, self.epoch_loss = self.epoch + 1, 0, [0.0, 0]
        return improved


class Checkpointer:
    """Saves and restores everything a run needs to continue exactly where it stopped."""

    def __init__(
        self,
        run_dir: Path,
        config: TrainConfig,
        classes: tuple[str, ...],
        model: torch.nn.Module,
        optimizer: torch.optim.Optimizer,
        scheduler: torch.optim.lr_scheduler.LRScheduler,
        scaler: torch.amp.GradScaler,
        data: dict[str, Any] | None = None,  # fingerprints of the splits (data/fingerprint.py)
        *,
        writes: bool = True,  # False on every DDP rank but the first
    ) -> None:
        self.run_dir, self.config, self.classes = run_dir, config, classes
        self.model, self.optimizer, self.scheduler, self.scaler = (
            model,
            optimizer,
            scheduler,
            scaler,
        )
        self.data = data
        self.writes = writes
        self._config_recorded = False  # config.yaml rewritten with the first last.pt

    def state_dict(self, state: RunState) -> dict[str, Any]:
        return {
            "format": CHECKPOINT_FORMAT,
            "version": CHECKPOINT_VERSION,
            "config": to_dict(self.config),
            "classes": list(self.classes),
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "epoch": state.epoch,
            "batch": state.batch,
            "step": state.step,
            "history": [record.to_dict() for record in state.history],  # plain data
            "best": state.best,
            "epoch_loss": state.epoch_loss,
            "data": self.data,
        }

    def save(self, name: str, state: RunState) -> None:
        """run_dir/name; with keep_checkpoints each last.pt is also kept as
        checkpoints/step-N.pt (a byte copy: no second pickling)."""
        if not self.writes:
            return
        path = save_checkpoint(self.state_dict(state), self.run_dir / name)  # the old one stays
        if name == "last.pt" and not self._config_recorded:
            self._record_config()
        if self.config.keep_checkpoints and name == "last.pt":
            kept = self.run_dir / "checkpoints" / f"step-{state.step:07d}.pt"
            with writing(kept):
                atomic_write(kept, lambda tmp: shutil.copyfile(path, tmp))

    def _record_config(self) -> None:
        """config.yaml describes last.pt: a run resumed with --set (e.g. max_steps) writes its
        changed configuration only once a checkpoint holds it, so a resume stopped before
        that leaves no config.yaml that the next resume would report as edited by hand."""
        path = self.run_dir / "config.yaml"
        with writing(path):
            atomic_write(path, lambda tmp: save_config(self.config, tmp))
        self._config_recorded = True

    def restore(self, checkpoint: dict[str, Any]) -> RunState:
        self.model.load_state_dict(checkpoint["model"])
        self.optimizer.load_state_dict(checkpoint["optimizer"])
        self.scheduler.load_state_dict(checkpoint["scheduler"])
        self.scaler.load_state_dict(checkpoint["scaler"])
        return RunState(
            epoch=checkpoint["epoch"],
            batch=checkpoint["batch"],
            step=checkpoint["step"],
            history=[EpochRecord.from_dict(record) for record in checkpoint["history"]],
            best=checkpoint["best"],
            epoch_loss=list(checkpoint["epoch_loss"]),
        )


def save_checkpoint(checkpoint: dict[str, Any], path: Path) -> Path:
    """A checkpoint is either the old file or the complete new one, never half of one.

    A write that fails (a full disk, a file-size limit) is an OutputError naming the file and
    the reason. torch.save reports those as a RuntimeError; written through a Python file, the
    OSError it failed on is that error's context, so the reason is the operating system's.
    """

    def write(temporary: Path) -> None:
        with temporary.open("wb") as file:
            torch.save(checkpoint, file)

    try:
        return atomic_write(path, write)
    except (OSError, RuntimeError) as exc:
        raise OutputError(f"{path}: cannot write ({_write_problem(exc)})") from exc


def _write_problem(exc: BaseException) -> str:
    """The OSError behind a failed write if there is one ("File too large"), else torch's
    complaint, which names no cause: the likely ones are said."""
    cause: BaseException | None = exc
    while cause is not None:
        if isinstance(cause, OSError):
            return reason(cause)
        cause = cause.__cause__ or cause.__context__
    first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return f"PyTorch could not write it: {first_line}; is the disk full or a file-size limit hit?"


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """A qcsfer training checkpoint, read without running any code it might hold."""
    try:
        checkpoint = load_tensors_only(path)
    except Exception as exc:  # torch raises several types for foreign or unsafe pickles
        why = not_a_torch_file(path) or torch_refusal(exc)
        raise TrainingError(f"{path}: not a readable qcsfer checkpoint ({why})") from exc
    if not isinstance(checkpoint, dict) or checkpoint.get("format") != CHECKPOINT_FORMAT:
        raise TrainingError(f"{path}: not a qcsfer training checkpoint")
    if checkpoint.get("version") != CHECKPOINT_VERSION:
        raise TrainingError(
            f"{path}: checkpoint version {checkpoint.get('version')} is not supported"
        )
    return checkpoint


def run_config(checkpoint: dict[str, Any]) -> TrainConfig:
    """The configuration the checkpoint's run was started with."""
    return from_dict(TrainConfig, checkpoint["config"])


def model_from_checkpoint(checkpoint: dict[str, Any]) -> QCSModel:
    """The training model (on the CPU) with the checkpoint's weights."""
    config = run_config(checkpoint)
    model = QCSModel(config.model_config(len(checkpoint["classes"])), config.mode)
    model.load_state_dict(checkpoint["model"])
    return model


def weights_only(checkpoint: dict[str, Any], model_state: dict[str, torch.Tensor]) -> dict:
    """A checkpoint holding `model_state` without what only resuming needs (not resumable)."""
    stripped = {k: v for k, v in checkpoint.items() if k not in RESUME_ONLY}
    stripped["model"] = model_state
    return stripped
