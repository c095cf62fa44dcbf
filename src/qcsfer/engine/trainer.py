"""The training loop: baseline, DCS and QCS in one loop, single process to multi-node DDP.

Read top to bottom: set-up (devices, data, model, optimiser), then the epoch loop, then the
checkpoint and logging helpers. Reproducibility rule: every random choice of a step (which
images, their augmentation, dropout) is a pure function of (seed, epoch, step, rank), so a run
resumed from any checkpoint continues exactly as if it had never stopped.
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import signal
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from ..config import InitConfig, TrainConfig, from_dict, save_config, to_dict
from ..data.datasets import read_dataset, stratified_split
from ..data.images import DiskImages, MemoryImages, default_cache_dir, load_images
from ..data.records import LabeledImages
from ..data.sampling import BranchSampler
from ..data.sources import combine, read_source
from ..data.transforms import Preprocessing, train_transform
from ..io import atomic_write
from ..models.base import BaseNetwork
from ..models.convert import load_ir50_backbone, load_reference_checkpoint
from ..models.qcs import QCSModel, branch_loss
from ..models.weights import load_weights, save_weights
from .device import autocast, select_device
from .evaluate import predict_logits
from .metrics import Metrics, compute_metrics
from .plots import plot_confusion, plot_curves
from .sam import SAM

log = logging.getLogger("qcsfer.train")

CHECKPOINT_VERSION = 1
MEMORY_LIMIT_GB = 8.0  # storage "auto": hold a split in memory below this decoded size


class TrainingError(RuntimeError):
    """The run cannot continue (for example a non-finite loss); the last checkpoint is kept."""


# ----------------------------------------------------------------------------- set-up helpers


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


def init_distributed(device_type: str) -> Distributed:
    """torchrun sets RANK/WORLD_SIZE/LOCAL_RANK; gloo on CPU, NCCL on GPU."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size == 1:
        return Distributed()
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device_type == "cuda" else "gloo")
    return Distributed(
        dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0"))
    )


def step_seed(seed: int, epoch: int, step: int, rank: int) -> int:
    """A distinct, reproducible seed for every (epoch, step, rank)."""
    return int(np.random.SeedSequence([seed, epoch, step, rank]).generate_state(1)[0])


@dataclass
class Split:
    """Records of a split and where their pixels come from (memory, or disk batch by batch)."""

    records: LabeledImages
    images: MemoryImages | DiskImages
    skipped_at_load: int = 0  # unreadable images removed before training (memory storage)
    weights: np.ndarray | None = None  # anchor sampling weight per image (several sources)

    @property
    def skipped(self) -> int:
        return self.skipped_at_load + getattr(self.images, "skipped", 0)

    @classmethod
    def load(
        cls,
        records: LabeledImages,
        prep: Preprocessing,
        storage: str,
        cache_dir: Path | None,
        framing: float = 1.0,
    ) -> Split:
        channels = 1 if prep.grayscale else 3
        size_gb = len(records) * channels * prep.load_size**2 / 1e9
        if storage == "disk" or (storage == "auto" and size_gb > MEMORY_LIMIT_GB):
            log.info(
                "%s/%s: decoding from disk per batch (%.1f GB decoded)",
                records.name,
                records.split,
                size_gb,
            )
            return cls(records, DiskImages(records.paths, prep.load_size, prep.grayscale))
        store = load_images(
            records.paths, prep.load_size, prep.grayscale, cache_dir, framing=framing
        )
        if store.skipped:
            log.warning(
                "%s/%s: skipped %d unreadable images", records.name, records.split, store.skipped
            )
            keep = np.flatnonzero(store.valid)
            images = MemoryImages(store.images[torch.from_numpy(keep)])
            return cls(records.subset(keep), images, store.skipped)
        return cls(records, MemoryImages(store.images))

    @classmethod
    def combine(cls, parts: list[Split], weights: list[float]) -> Split:
        """One training split from several sources held in memory, each image weighted."""
        if not all(isinstance(p.images, MemoryImages) for p in parts):
            raise TrainingError("training on several sources needs data.storage: memory")
        return cls(
            combine([p.records for p in parts]),
            MemoryImages(torch.cat([p.images.images for p in parts])),
            sum(p.skipped_at_load for p in parts),
            np.concatenate(
                [np.full(len(p.records), w) for p, w in zip(parts, weights, strict=True)]
            ),
        )

    def targets(self, indices: np.ndarray) -> torch.Tensor:
        """Class ids, or vote distributions where the split has soft labels."""
        if self.records.soft_labels is not None:
            return torch.from_numpy(self.records.soft_labels[indices])
        return torch.from_numpy(self.records.labels[indices])


def load_splits(config: TrainConfig, run_dir: Path | None) -> tuple[Split, Split, dict[str, Split]]:
    """Training split (every source combined), validation split, held-out source slices."""
    data = config.data
    train = read_dataset(data.format, data.root, data.train_split, **data.options)
    if data.val_split is None:
        train, val = stratified_split(train, data.val_fraction, config.seed)
        if run_dir is not None:
            record = {
                "validation_carved_from": data.train_split,
                "fraction": data.val_fraction,
                "seed": config.seed,
                "paths": [str(p) for p in val.paths],
            }
            (run_dir / "validation_split.json").write_text(json.dumps(record))
    else:
        val_options = data.options if data.val_options is None else data.val_options
        val = read_dataset(data.format, data.root, data.val_split, **val_options)
    if data.limit is not None:
        rng = np.random.default_rng(config.seed)
        train = train.subset(np.sort(rng.permutation(len(train))[: data.limit]))
    train.check_classes()
    for split in (train, val):
        for reason, count in split.notes.items():
            log.info("%s/%s: %d rows %s", split.name, split.split, count, reason)
    if val.classes != train.classes:
        raise TrainingError(f"train classes {train.classes} differ from validation {val.classes}")
    cache = (
        None
        if data.cache_dir is None
        else (default_cache_dir() if data.cache_dir == "default" else Path(data.cache_dir))
    )
    storage = data.storage
    train_split = Split.load(train, config.preprocessing, storage, cache)
    val_split = Split.load(val, config.preprocessing, storage, cache)
    if not data.sources:
        return train_split, val_split, {}
    parts, held_out = [train_split], {}
    for source in data.sources:
        records, slice_ = read_source(source, train.classes, config.seed)
        for reason, count in records.notes.items():
            log.info("source %s: %d rows %s", source.label, count, reason)
        parts.append(Split.load(records, config.preprocessing, storage, cache, source.framing))
        if slice_ is not None:
            held_out[source.label] = Split.load(
                slice_, config.preprocessing, storage, cache, source.framing
            )
    combined = Split.combine(parts, [1.0] + [s.weight for s in data.sources])
    combined.records.check_classes()
    return combined, val_split, held_out


def initialize(model: QCSModel, init: InitConfig) -> None:
    """Starting weights from foreign or earlier checkpoints; every key is accounted for."""
    if init.ir50:
        log.info(load_ir50_backbone(init.ir50, model).summary())
    if init.reference:
        state, report = load_reference_checkpoint(init.reference, model.config, model.mode)
        model.load_state_dict(state)
        log.info(report.summary())
    if init.backbone_from:
        source, _ = load_weights(init.backbone_from, base_only=True)
        model.base.backbone.load_state_dict(source.backbone.state_dict())
        log.info("backbone initialised from %s", init.backbone_from)
    if init.weights:
        source, card = load_weights(init.weights)
        if card.network == "base":
            model.base.load_state_dict(source.state_dict())
        elif card.mode == model.mode:
            model.load_state_dict(source.state_dict())
        else:
            raise TrainingError(
                f"{init.weights}: a {card.mode} training graph cannot start a "
                f"{model.mode} run; use its base network (an inference weights file)"
            )
        log.info("all weights initialised from %s (%s)", init.weights, card.network)


def build_optimizer(model: torch.nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
    """Weight decay on weight matrices and kernels only (not norms, biases, tokens, theta)."""
    o = config.optim
    decay = 0.0 if o.reference_weight_decay else o.weight_decay
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    no_decay = ("cls_token", "pos_embed")

    def decays(name: str, p: torch.Tensor) -> bool:
        return p.ndim >= 2 and not name.endswith(no_decay)

    groups = [
        {"params": [p for n, p in named if decays(n, p)], "weight_decay": decay},
        {"params": [p for n, p in named if not decays(n, p)], "weight_decay": 0.0},
    ]
    if o.name == "adam":
        # torch's Adam adds decay to the gradient (L2); AdamW decouples it.
        base = torch.optim.Adam(groups, lr=o.lr, betas=o.betas)
    elif o.name == "adamw":
        base = torch.optim.AdamW(groups, lr=o.lr, betas=o.betas)
    elif o.name == "sgd":
        base = torch.optim.SGD(groups, lr=o.lr, momentum=o.momentum, nesterov=o.momentum > 0)
    else:
        raise ValueError(f"unknown optimiser {o.name!r}")
    return SAM(base, o.sam_rho, o.sam_adaptive) if o.sam else base


def lr_factor(config: TrainConfig, step: int, steps_per_epoch: int) -> float:
    """The learning-rate multiplier at a given optimiser step."""
    s = config.schedule
    total = config.epochs * steps_per_epoch
    warmup = int(s.warmup_epochs * steps_per_epoch)
    if step < warmup:
        return (step + 1) / warmup
    if s.name == "constant":
        return 1.0
    if s.name == "exponential":
        return s.gamma ** (step // steps_per_epoch)
    progress = min((step - warmup) / max(total - warmup, 1), 1.0)
    if s.name == "cosine":
        return s.min_lr_ratio + (1 - s.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))
    if s.name == "onecycle":
        # 30% rise from lr/25 to lr, then cosine down to lr/1e4 (torch's OneCycleLR shape).
        peak = 0.3
        if progress < peak:
            return 1 / 25 + (1 - 1 / 25) * 0.5 * (1 - math.cos(math.pi * progress / peak))
        return 1e-4 + (1 - 1e-4) * 0.5 * (1 + math.cos(math.pi * (progress - peak) / (1 - peak)))
    raise ValueError(f"unknown schedule {s.name!r}")


# ----------------------------------------------------------------------------- evaluation


def evaluate_split(
    base: BaseNetwork, split: Split, config: TrainConfig, device: torch.device, dd: Distributed
) -> Metrics:
    """Validation metrics; under DDP each rank scores a shard and the confusion is summed."""
    shard = np.arange(dd.rank, len(split.records), dd.world_size)
    targets, predictions = [], []
    for chunk in np.array_split(shard, max(1, len(shard) // 4096)):
        images, valid = split.images.load(chunk)
        logits = predict_logits(
            base,
            images[torch.from_numpy(valid)],
            config.preprocessing,
            device,
            config.precision,
            config.eval_flip,
            config.eval_batch_size,
            config.channels_last,
        )
        targets.append(split.records.labels[chunk[valid]])
        predictions.append(logits.argmax(1).numpy())
    metrics = compute_metrics(
        np.concatenate(targets), np.concatenate(predictions), split.records.classes
    )
    if dd.enabled:
        confusion = torch.from_numpy(metrics.confusion).to(device)
        dist.all_reduce(confusion)
        metrics = Metrics(metrics.classes, confusion.cpu().numpy())
    return metrics


# ----------------------------------------------------------------------------- checkpoints


def save_atomic(obj: dict, path: Path) -> None:
    """A checkpoint is either the old file or the complete new one, never half of one."""
    atomic_write(path, lambda tmp: torch.save(obj, tmp))


def load_checkpoint(path: Path) -> dict:
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises several types for foreign or unsafe pickles
        raise TrainingError(f"{path}: not a readable qcsfer checkpoint ({exc})") from exc
    if not isinstance(checkpoint, dict) or checkpoint.get("format") != "qcsfer-checkpoint":
        raise TrainingError(f"{path}: not a qcsfer training checkpoint")
    if checkpoint.get("version") != CHECKPOINT_VERSION:
        raise TrainingError(
            f"{path}: checkpoint version {checkpoint.get('version')} is not supported"
        )
    return checkpoint


# ----------------------------------------------------------------------------- progress


class Progress:
    """One updating line on a terminal; plain log lines every `every` steps otherwise."""

    def __init__(self, total: int, epoch: int, first: int, enabled: bool, every: int = 50) -> None:
        self.total, self.epoch, self.first, self.enabled, self.every = (
            total,
            epoch,
            first,
            enabled,
            every,
        )
        self.tty = enabled and sys.stderr.isatty()
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
        if self.tty:
            sys.stderr.write("\r" + line + " " * 4)
            sys.stderr.flush()
        elif done % self.every == 0 or done == self.total:
            log.info(line)

    def close(self) -> None:
        if self.tty:
            sys.stderr.write("\n")


# ----------------------------------------------------------------------------- the run


def default_run_dir(config: TrainConfig) -> Path:
    name = (
        config.name
        or f"{config.data.format}-{config.mode}-{config.model}-{datetime.now():%Y%m%d-%H%M%S}"
    )
    return Path(config.out_dir) / name


def train(
    config: TrainConfig | None = None, run_dir: Path | None = None, resume: bool = False
) -> Path:
    """Train, or with `resume` continue run_dir/last.pt under the run's own configuration.

    Returns the run directory.
    """
    checkpoint = None
    if resume:
        if run_dir is None:
            raise TrainingError("resuming needs the run directory")
        last = Path(run_dir) / "last.pt"
        if not last.is_file():
            raise TrainingError(f"cannot resume: {last} does not exist")
        checkpoint = load_checkpoint(last)
        config = from_dict(TrainConfig, checkpoint["config"])  # before anything depends on it
    elif config is None:
        raise TrainingError("a configuration is needed to start a run")
    requested = select_device(config.device)
    dd = init_distributed(requested.type)
    device = select_device(config.device, dd.local_rank)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    run_dir = Path(run_dir) if run_dir is not None else default_run_dir(config)
    if dd.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        save_config(config, run_dir / "config.yaml")
        _log_to_file(run_dir / "train.log")
    torch.manual_seed(config.seed)

    train_split, val_split, source_splits = load_splits(config, run_dir if dd.is_main else None)
    classes = train_split.records.classes
    model = QCSModel(config.model_config(len(classes)), config.mode).to(device)
    if config.channels_last:
        model = model.to(memory_format=torch.channels_last)
    if checkpoint is None:
        initialize(model, config.init)
    optimizer = build_optimizer(model, config)
    sampler = BranchSampler(
        train_split.records.labels,
        model.branches,
        config.batch_size,
        config.sampler,
        seed=config.seed,
        rank=dd.rank,
        world_size=dd.world_size,
        class_names=classes,
        weights=train_split.weights,
    )
    steps_per_epoch = len(sampler)
    if steps_per_epoch == 0:
        raise TrainingError(
            f"{len(train_split.records)} training images give no full batch of "
            f"{config.batch_size} x {dd.world_size} processes"
        )
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: lr_factor(config, step, steps_per_epoch)
    )
    scaler = torch.amp.GradScaler(device.type, enabled=config.precision == "fp16")
    if scaler.is_enabled() and isinstance(optimizer, SAM):
        raise TrainingError("SAM with fp16 gradient scaling is not supported: use bf16 or fp32")

    epoch, batch_start, history, best, epoch_loss = 0, 0, [], -1.0, [0.0, 0]
    if checkpoint is not None:
        model.load_state_dict(checkpoint["model"])
        optimizer.load_state_dict(checkpoint["optimizer"])
        scheduler.load_state_dict(checkpoint["scheduler"])
        scaler.load_state_dict(checkpoint["scaler"])
        epoch, batch_start = checkpoint["epoch"], checkpoint["batch"]
        history, best = checkpoint["history"], checkpoint["best"]
        epoch_loss = list(checkpoint["epoch_loss"])
        log.info("resumed %s at epoch %d, batch %d", run_dir, epoch, batch_start)

    network: torch.nn.Module = model
    if dd.enabled:
        network = DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None
        )
    if config.compile:
        network = torch.compile(network)

    def state(epoch: int, batch: int) -> dict:
        return {
            "format": "qcsfer-checkpoint",
            "version": CHECKPOINT_VERSION,
            "config": to_dict(config),
            "classes": list(classes),
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "scaler": scaler.state_dict(),
            "epoch": epoch,
            "batch": batch,
            "step": epoch * steps_per_epoch + batch,
            "history": history,
            "best": best,
            "epoch_loss": epoch_loss,  # sum and count of this epoch's step losses so far
        }

    def save(name: str, epoch: int, batch: int) -> None:
        if dd.is_main:
            checkpoint = state(epoch, batch)
            save_atomic(checkpoint, run_dir / name)
            if config.keep_checkpoints and name == "last.pt":  # a byte copy: no second pickling
                kept = run_dir / "checkpoints" / f"step-{checkpoint['step']:07d}.pt"
                atomic_write(kept, lambda tmp: shutil.copyfile(run_dir / name, tmp))

    if dd.is_main:
        n_params = sum(p.numel() for p in model.base.parameters())
        log.info(
            "%s %s on %s x%d: %d train / %d val images, %d classes, %.2fM inference parameters, "
            "%d steps/epoch",
            config.mode,
            config.model,
            device,
            dd.world_size,
            len(train_split.records),
            len(val_split.records),
            len(classes),
            n_params / 1e6,
            steps_per_epoch,
        )

    tensorboard = _open_tensorboard(run_dir) if config.tensorboard and dd.is_main else None
    updater = Updater(network, optimizer, scaler, config, device, dd)
    generator = torch.Generator(device=device)
    global_step = epoch * steps_per_epoch + batch_start
    finished = False
    try:
        with GracefulStop(dd) as stop:
            while epoch < config.epochs:
                batches = sampler.epoch(epoch)
                model.train()
                progress = Progress(steps_per_epoch, epoch + 1, batch_start, dd.is_main)
                b = batch_start
                for b, images, valid in iterate_batches(train_split.images, batches, batch_start):
                    if config.max_steps is not None and global_step >= config.max_steps:
                        break
                    seed = step_seed(config.seed, epoch, b, dd.rank)
                    generator.manual_seed(seed)
                    torch.manual_seed(seed)  # dropout
                    index = batches[b]  # G x B
                    # An example with an unreadable image (disk storage) is left out of the loss.
                    keep = torch.from_numpy(valid.reshape(index.shape).all(0)).to(device)
                    x = train_transform(
                        images.to(device, non_blocking=True),
                        config.preprocessing,
                        config.augmentation,
                        generator,
                    )
                    if config.channels_last:
                        x = x.contiguous(memory_format=torch.channels_last)
                    x = x.unflatten(0, index.shape)
                    targets = train_split.targets(index.reshape(-1)).to(device)
                    loss = updater.step(x, targets.unflatten(0, index.shape), keep)
                    if not math.isfinite(loss):
                        raise TrainingError(
                            f"non-finite loss or gradients ({loss}) at epoch {epoch + 1}, step "
                            f"{b}: stopping without applying it; the last good checkpoint "
                            f"{run_dir / 'last.pt'} is kept"
                        )
                    scheduler.step()
                    global_step += 1
                    epoch_loss = [epoch_loss[0] + loss, epoch_loss[1] + 1]
                    progress.update(
                        b,
                        x.shape[0] * x.shape[1] * dd.world_size,
                        loss,
                        scheduler.get_last_lr()[0],
                    )
                    every = config.checkpoint_every_steps
                    if (every and global_step % every == 0) or stop.requested():
                        save("last.pt", epoch, b + 1)
                    if stop.requested():
                        raise KeyboardInterrupt
                else:
                    progress.close()
                    train_seconds = time.perf_counter() - progress.start
                    record = _end_of_epoch(
                        model,
                        val_split,
                        train_split,
                        config,
                        device,
                        dd,
                        epoch,
                        epoch_loss,
                        progress.images / max(train_seconds, 1e-9),
                        train_seconds,
                        source_splits,
                    )
                    history.append(record)
                    if dd.is_main:
                        _write_history(history, run_dir, tensorboard)
                    improved = record["val_accuracy"] > best
                    best = max(best, record["val_accuracy"])
                    epoch, batch_start, epoch_loss = epoch + 1, 0, [0.0, 0]
                    if improved and dd.is_main:  # best first: a kill before last.pt redoes both
                        save_atomic(state(epoch, 0), run_dir / "best.pt")
                        _export_best(model, classes, config, record, run_dir)
                    save("last.pt", epoch, 0)
                    if stop.requested():
                        raise KeyboardInterrupt
                    continue
                progress.close()  # max_steps reached inside the epoch
                save("last.pt", epoch, b)
                break
        finished = True
    except KeyboardInterrupt:
        if dd.is_main:
            log.warning("interrupted: resume with qcsfer train --resume %s", run_dir)
        raise
    finally:
        if dd.enabled and dist.is_initialized():
            if finished:  # no rank tears its connections down while another still writes files
                dist.barrier()
            dist.destroy_process_group()
    return run_dir


class GracefulStop:
    """Ctrl-C (SIGINT/SIGTERM) asks the loop to stop at the next step boundary, never inside an
    update; the loop then writes a resumable checkpoint. A second Ctrl-C stops at once. Under
    DDP the request is shared so every rank stops at the same step."""

    def __init__(self, dd: Distributed) -> None:
        self.dd = dd
        self.flag = False
        self.previous: dict[int, Any] = {}

    def _handler(self, signum: int, frame: Any) -> None:
        if self.flag:
            raise KeyboardInterrupt
        self.flag = True
        log.warning("stop requested: finishing the current step, then saving")

    def __enter__(self) -> GracefulStop:
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self.previous[sig] = signal.signal(sig, self._handler)
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)

    def requested(self) -> bool:
        if not self.dd.enabled:
            return self.flag
        flag = torch.tensor([float(self.flag)])
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        return bool(flag.item())


class Updater:
    """One optimiser update: forward, backward (twice for SAM: at w, then at the perturbed w),
    clip, step. Nothing is applied unless the loss and gradients are finite on every rank."""

    def __init__(self, network, optimizer, scaler, config: TrainConfig, device, dd) -> None:
        self.network, self.optimizer, self.scaler = network, optimizer, scaler
        self.config, self.device, self.dd = config, device, dd
        self.parameters = [p for p in network.parameters() if p.requires_grad]

    def _forward_backward(self, x, targets, keep) -> float:
        with autocast(self.device, self.config.precision):
            logits = self.network(x)
        loss = branch_loss(logits, targets, keep)
        self.scaler.scale(loss).backward()
        return loss.item()

    def _all_finite(self, value: float) -> bool:
        finite = torch.tensor([float(math.isfinite(value))], device=self.device)
        if self.dd.enabled:
            dist.all_reduce(finite, op=dist.ReduceOp.MIN)
        return bool(finite.item())

    def step(self, x, targets, keep) -> float:
        """Returns the loss at w, or nan when the update was refused."""
        self.optimizer.zero_grad(set_to_none=True)
        loss = self._forward_backward(x, targets, keep)
        if not self._all_finite(loss):
            return math.nan
        sam = isinstance(self.optimizer, SAM)
        try:
            if sam:
                self.optimizer.perturb()
                self.optimizer.zero_grad(set_to_none=True)
                if not self._all_finite(self._forward_backward(x, targets, keep)):
                    return math.nan
            self.scaler.unscale_(self.optimizer)
            grads = [p.grad for p in self.parameters if p.grad is not None]
            norm = torch.nn.utils.get_total_norm(grads)
            if self.config.optim.grad_clip:
                torch.nn.utils.clip_grads_with_norm_(
                    self.parameters, self.config.optim.grad_clip, norm
                )
            # fp16 overflow is the scaler's business (it skips the step); otherwise refuse.
            if not self.scaler.is_enabled() and not self._all_finite(float(norm)):
                return math.nan
            self.scaler.step(self.optimizer)
            self.scaler.update()
        finally:
            if sam:
                self.optimizer.restore()  # no-op after step(); undoes w + e otherwise
        return loss


def iterate_batches(
    source: MemoryImages | DiskImages, batches: np.ndarray, start: int
) -> Iterator[tuple[int, torch.Tensor, np.ndarray]]:
    """(batch number, uint8 images, validity) from `start` on; from disk, the next batch is
    decoded in a background thread while the current one trains."""
    if isinstance(source, MemoryImages):
        for b in range(start, len(batches)):
            yield (b, *source.load(batches[b].reshape(-1)))
        return
    with ThreadPoolExecutor(1) as prefetch:
        upcoming = None
        for b in range(start, len(batches)):
            current = upcoming or prefetch.submit(source.load, batches[b].reshape(-1))
            if b + 1 < len(batches):
                upcoming = prefetch.submit(source.load, batches[b + 1].reshape(-1))
            yield (b, *current.result())


def _end_of_epoch(
    model,
    val_split,
    train_split,
    config,
    device,
    dd,
    epoch,
    epoch_loss,
    rate,
    train_seconds,
    source_splits,
) -> dict:
    metrics = evaluate_split(model.base, val_split, config, device, dd)
    held_out = {
        name: evaluate_split(model.base, split, config, device, dd)
        for name, split in source_splits.items()
    }
    loss = torch.tensor(epoch_loss, dtype=torch.float64)
    if dd.enabled:
        loss = loss.to(device)
        dist.all_reduce(loss)
    record = {
        "epoch": epoch + 1,
        "train_loss": float(loss[0] / max(loss[1], 1)),
        "val_accuracy": metrics.accuracy,
        "val_balanced_accuracy": metrics.balanced_accuracy,
        "val_macro_f1": metrics.macro_f1,
        "k": model.k_values(),
        "images_per_second": rate,  # training steps only, validation excluded
        "epoch_seconds": train_seconds,
        "skipped_images": train_split.skipped + val_split.skipped,
    }
    if held_out:  # reported beside the validation split, never selected on
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
    if dd.is_main:
        log.info(
            "epoch %d: loss %.4f, val accuracy %.4f, balanced %.4f, macro F1 %.4f, k %s, "
            "%.0f img/s, %d unreadable images skipped",
            record["epoch"],
            record["train_loss"],
            metrics.accuracy,
            metrics.balanced_accuracy,
            metrics.macro_f1,
            [round(k, 3) for k in record["k"]],
            record["images_per_second"],
            record["skipped_images"],
        )
        for name, m in held_out.items():
            log.info(
                "epoch %d: held-out %s accuracy %.4f, balanced %.4f",
                record["epoch"],
                name,
                m.accuracy,
                m.balanced_accuracy,
            )
    return record


def _write_history(history: list[dict], run_dir: Path, tensorboard) -> None:
    """metrics.jsonl rewritten whole from the checkpointed history: no duplicate lines after a
    resume; plots; TensorBoard scalars when enabled."""
    text = "".join(json.dumps(h) + "\n" for h in history)
    atomic_write(run_dir / "metrics.jsonl", lambda tmp: tmp.write_text(text))
    record = history[-1]
    if tensorboard is not None:
        for key in ("train_loss", "val_accuracy", "val_balanced_accuracy", "val_macro_f1"):
            tensorboard.add_scalar(key, record[key], record["epoch"])
        for scale, k in enumerate(record["k"], start=1):
            tensorboard.add_scalar(f"k/scale{scale}", k, record["epoch"])
        tensorboard.flush()
    plot_curves(history, run_dir / "curves.png")
    metrics = Metrics(tuple(record["classes"]), np.asarray(record["confusion"]))
    plot_confusion(
        metrics, run_dir / "confusion_matrix.png", title=f"epoch {record['epoch']} validation"
    )


def _open_tensorboard(run_dir: Path):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        log.warning("tensorboard=true but the tensorboard package is not installed: skipping")
        return None
    return SummaryWriter(str(run_dir / "tensorboard"))


def _export_best(
    model: QCSModel, classes, config: TrainConfig, record: dict, run_dir: Path
) -> None:
    """The best model as a weights file (safetensors + JSON). It holds the whole training graph
    (so `explain` can draw CSA maps); inference loads only its base network."""
    save_weights(
        model,
        run_dir / "best.safetensors",
        classes=list(classes),
        preprocessing=to_dict(config.preprocessing),
        provenance={
            "mode": config.mode,
            "config": to_dict(config),
            "epoch": record["epoch"],
            "val_accuracy": record["val_accuracy"],
            "val_balanced_accuracy": record["val_balanced_accuracy"],
        },
    )


def _log_to_file(path: Path) -> None:
    handler = logging.FileHandler(path)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.getLogger("qcsfer").addHandler(handler)
