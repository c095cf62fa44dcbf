"""What a run tells people: the progress line, train.log, metrics.jsonl, plots, TensorBoard,
and the best model as a weights file. Only the first DDP rank calls what writes files."""

from __future__ import annotations

import logging
import os
import time
from datetime import datetime
from pathlib import Path
from typing import Any

from ..config import TrainConfig, save_config, to_dict
from ..io import atomic_write
from ..models.qcs import QCSModel
from ..models.weights import network_card, save_weights
from ..status_line import StatusLine
from .epoch_record import HISTORY_FILE, EpochRecord, history_text
from .plots import plot_confusion, plot_curves

log = logging.getLogger("qcsfer.train")


class EpochProgress:
    """One updating line on a terminal; plain log lines every `every` steps otherwise."""

    def __init__(self, total: int, epoch: int, first: int, enabled: bool, every: int = 50) -> None:
        self.total, self.epoch, self.first, self.enabled, self.every = (
            total,
            epoch,
            first,
            enabled,
            every,
        )
        self.line = StatusLine(enabled)
        self.start = time.perf_counter()
        self.images = 0

    def update(self, step: int, images: int, loss: float, lr: float) -> None:
        self.images += images
        if not self.enabled:
            return
        elapsed = time.perf_counter() - self.start
        rate = self.images / max(elapsed, 1e-9)
        done = step + 1
        eta = elapsed / max(done - self.first, 1) * (self.total - done)
        line = (
            f"epoch {self.epoch} {done}/{self.total} loss {loss:.4f} lr {lr:.2e} "
            f"{rate:.0f} img/s ETA {eta / 60:.1f} min"
        )
        if self.line.enabled:
            self.line.show(line)
        elif done % self.every == 0 or done == self.total:
            log.info(line)

    def close(self) -> float:
        """Ends the line; returns the seconds since the epoch (or its resumed part) began."""
        self.line.end()
        return time.perf_counter() - self.start


def default_run_dir(config: TrainConfig) -> Path:
    name = (
        config.name
        or f"{config.data.format}-{config.mode}-{config.model}-{datetime.now():%Y%m%d-%H%M%S}"
    )
    return Path(config.out_dir) / name


def open_run_dir(run_dir: Path, config: TrainConfig) -> None:
    """The run's folder with its resolved config.yaml; log lines also go to its train.log."""
    run_dir.mkdir(parents=True, exist_ok=True)
    save_config(config, run_dir / "config.yaml")
    handler = logging.FileHandler(run_dir / "train.log")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.getLogger("qcsfer").addHandler(handler)


def close_run_log(run_dir: Path) -> None:
    """Detach and close `run_dir`'s train.log handler, so that later log lines of this process
    (another run, a test, a notebook) never go to this run's log or a removed folder's."""
    logger = logging.getLogger("qcsfer")
    target = os.path.abspath(run_dir / "train.log")
    for handler in list(logger.handlers):
        if isinstance(handler, logging.FileHandler) and handler.baseFilename == target:
            logger.removeHandler(handler)
            handler.close()


class RunLog:
    """metrics.jsonl, curves and confusion plots, and TensorBoard scalars when enabled."""

    def __init__(self, run_dir: Path, tensorboard: bool) -> None:
        self.run_dir = run_dir
        self.tensorboard = _open_tensorboard(run_dir) if tensorboard else None

    def write(self, history: list[EpochRecord]) -> None:
        """Logs the newest epoch; metrics.jsonl is rewritten whole from the checkpointed
        history, so a resumed run has no duplicate lines."""
        record = history[-1]
        rate = record.images_per_second
        log.info(
            "epoch %d: loss %.4f, val accuracy %.4f, balanced %.4f, macro F1 %.4f, k %s, "
            "%s img/s, %d unreadable images skipped",
            record.epoch,
            record.train_loss,
            record.val_accuracy,
            record.val_balanced_accuracy,
            record.val_macro_f1,
            [round(k, 3) for k in record.k],
            "n/a" if rate is None else f"{rate:.0f}",
            record.skipped_images,
        )
        for name, held in record.val_sources.items():
            log.info(
                "epoch %d: held-out %s accuracy %.4f, balanced %.4f",
                record.epoch,
                name,
                held.accuracy,
                held.balanced_accuracy,
            )
        text = history_text(history)
        atomic_write(self.run_dir / HISTORY_FILE, lambda tmp: tmp.write_text(text))
        if self.tensorboard is not None:
            scalars = {
                "train_loss": record.train_loss,
                "val_accuracy": record.val_accuracy,
                "val_balanced_accuracy": record.val_balanced_accuracy,
                "val_macro_f1": record.val_macro_f1,
            }
            for key, value in scalars.items():
                self.tensorboard.add_scalar(key, value, record.epoch)
            for scale, k in enumerate(record.k, start=1):
                self.tensorboard.add_scalar(f"k/scale{scale}", k, record.epoch)
            self.tensorboard.flush()
        plot_curves(history, self.run_dir / "curves.png")
        plot_confusion(
            record.metrics,
            self.run_dir / "confusion_matrix.png",
            title=f"epoch {record.epoch} validation",
        )


def _open_tensorboard(run_dir: Path) -> Any:
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        log.warning("tensorboard=true but the tensorboard package is not installed: skipping")
        return None
    return SummaryWriter(str(run_dir / "tensorboard"))


def export_best(model: QCSModel, config: TrainConfig, record: EpochRecord, run_dir: Path) -> None:
    """The best model as a weights file (safetensors + JSON). It holds the whole training graph
    (so `explain` can draw CSA maps); inference loads only its base network."""
    view = "valid_flip" if config.eval_flip else "valid"  # how validation read it
    card = network_card(
        model,
        classes=record.classes,
        preprocessing=config.preprocessing,
        metrics={
            view: {
                "accuracy": record.val_accuracy,
                "balanced_accuracy": record.val_balanced_accuracy,
            }
        },
        provenance={"config": to_dict(config), "epoch": record.epoch},
    )
    save_weights(model, run_dir / "best.safetensors", card)
