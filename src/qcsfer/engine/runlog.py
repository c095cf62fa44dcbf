"""What a run tells people: the progress line, train.log, metrics.jsonl, plots, TensorBoard,
and the best model as a weights file. Only the first DDP rank calls what writes files."""

from __future__ import annotations

import json
import logging
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np

from ..config import TrainConfig, save_config, to_dict
from ..io import atomic_write
from ..models.qcs import QCSModel
from ..models.weights import network_card, save_weights
from ..status_line import StatusLine
from .metrics import Metrics
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


def epoch_record(
    *,
    epoch: int,
    train_loss: float,
    metrics: Metrics,
    held_out: dict[str, Metrics],
    k: list[float],
    images: int,
    seconds: float,
    skipped_images: int,
) -> dict[str, Any]:
    """One line of metrics.jsonl (`epoch` counts from 1). Held-out slices of the extra
    training sources are reported beside the validation split, never selected on."""
    record = {
        "epoch": epoch,
        "train_loss": train_loss,
        "val_accuracy": metrics.accuracy,
        "val_balanced_accuracy": metrics.balanced_accuracy,
        "val_macro_f1": metrics.macro_f1,
        "k": k,
        # training steps only, not validation; None when this process trained no step of the
        # epoch (resumed after its last step): the rate was not measured, it was not zero
        "images_per_second": images / max(seconds, 1e-9) if images else None,
        "epoch_seconds": seconds,
        "skipped_images": skipped_images,
    }
    if held_out:
        record["val_sources"] = {
            name: {
                "accuracy": m.accuracy,
                "balanced_accuracy": m.balanced_accuracy,
                "macro_f1": m.macro_f1,
                "images": int(m.confusion.sum()),
            }
            for name, m in held_out.items()
        }
    record["classes"] = list(metrics.classes)
    record["confusion"] = metrics.confusion.tolist()
    return record


class RunLog:
    """metrics.jsonl, curves and confusion plots, and TensorBoard scalars when enabled."""

    def __init__(self, run_dir: Path, tensorboard: bool) -> None:
        self.run_dir = run_dir
        self.tensorboard = _open_tensorboard(run_dir) if tensorboard else None

    def write(self, history: list[dict]) -> None:
        """Logs the newest epoch; metrics.jsonl is rewritten whole from the checkpointed
        history, so a resumed run has no duplicate lines."""
        record = history[-1]
        log.info(
            "epoch %d: loss %.4f, val accuracy %.4f, balanced %.4f, macro F1 %.4f, k %s, "
            "%s img/s, %d unreadable images skipped",
            record["epoch"],
            record["train_loss"],
            record["val_accuracy"],
            record["val_balanced_accuracy"],
            record["val_macro_f1"],
            [round(k, 3) for k in record["k"]],
            "n/a" if record["images_per_second"] is None else f"{record['images_per_second']:.0f}",
            record["skipped_images"],
        )
        for name, m in record.get("val_sources", {}).items():
            log.info(
                "epoch %d: held-out %s accuracy %.4f, balanced %.4f",
                record["epoch"],
                name,
                m["accuracy"],
                m["balanced_accuracy"],
            )
        text = "".join(json.dumps(h) + "\n" for h in history)
        atomic_write(self.run_dir / "metrics.jsonl", lambda tmp: tmp.write_text(text))
        if self.tensorboard is not None:
            for key in ("train_loss", "val_accuracy", "val_balanced_accuracy", "val_macro_f1"):
                self.tensorboard.add_scalar(key, record[key], record["epoch"])
            for scale, k in enumerate(record["k"], start=1):
                self.tensorboard.add_scalar(f"k/scale{scale}", k, record["epoch"])
            self.tensorboard.flush()
        plot_curves(history, self.run_dir / "curves.png")
        metrics = Metrics(tuple(record["classes"]), np.asarray(record["confusion"]))
        plot_confusion(
            metrics,
            self.run_dir / "confusion_matrix.png",
            title=f"epoch {record['epoch']} validation",
        )


def _open_tensorboard(run_dir: Path) -> Any:
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        log.warning("tensorboard=true but the tensorboard package is not installed: skipping")
        return None
    return SummaryWriter(str(run_dir / "tensorboard"))


def export_best(model: QCSModel, config: TrainConfig, record: dict, run_dir: Path) -> None:
    """The best model as a weights file (safetensors + JSON). It holds the whole training graph
    (so `explain` can draw CSA maps); inference loads only its base network."""
    view = "valid_flip" if config.eval_flip else "valid"  # how validation read it
    card = network_card(
        model,
        classes=record["classes"],
        preprocessing=config.preprocessing,
        metrics={
            view: {
                "accuracy": record["val_accuracy"],
                "balanced_accuracy": record["val_balanced_accuracy"],
            }
        },
        provenance={"config": to_dict(config), "epoch": record["epoch"]},
    )
    save_weights(model, run_dir / "best.safetensors", card)
