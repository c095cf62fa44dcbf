"""The training run: baseline, DCS and QCS in one loop, single process to multi-node DDP.

Reads top to bottom: set-up (processes, run folder, data, model, optimiser, resumed state),
then the epoch loop (steps, periodic checkpoints, validation, best model). The parts live in
their own modules: data/splits.py (images and batches), step.py (one update; the loss is a
parameter), optim.py, checkpoint.py, distributed.py and run_reports.py.

Reproducibility rule: every random choice of a step (which images, their augmentation,
dropout) is a pure function of (seed, epoch, step, rank), so a run resumed from any checkpoint
continues exactly as if it had never stopped.
"""

from __future__ import annotations

import contextlib
import logging
import math
from pathlib import Path
from typing import NamedTuple

import torch
from torch.nn.parallel import DistributedDataParallel

from ..config import TrainConfig
from ..data.fingerprint import fingerprint
from ..data.sampling import BranchSampler
from ..data.splits import Split, iterate_batches, load_splits
from ..errors import TrainingError
from ..models.qcs import QCSModel, branch_loss
from ..models.vit import use_fused_attention
from ..outputs import OutputError, reason
from .checkpoint import Checkpointer, RunState, load_checkpoint, run_config
from .distributed import Distributed, GracefulStop, process_group, start_processes, step_seed
from .epoch_record import EpochRecord
from .evaluate import evaluate_split
from .logit_adjustment import logit_adjusted, prior_offset
from .optim import build_optimization
from .resume import check_data, keep_edited_config, resumed_config
from .run_claim import claim_run_dir
from .run_files import discard_failed_start, kept_checkpoint, last_checkpoint, write_failure
from .run_reports import (
    EpochProgress,
    RunLog,
    close_run_log,
    default_run_dir,
    export_best,
    open_run_dir,
)
from .step import LossFunction, TrainStep
from .warm_start import initialize

log = logging.getLogger("qcsfer.train")


def train(
    config: TrainConfig | None = None,
    run_dir: Path | None = None,
    resume: bool = False,
    *,
    loss: LossFunction = branch_loss,
    overwrite: bool = False,
    overrides: list[str] | None = None,
    allow_data_change: bool = False,
) -> Path:
    """Train, or with `resume` continue run_dir/last.pt under the run's own configuration
    (with `overrides` of options that are safe to change, such as epochs).

    A new run refuses a directory holding files unless `overwrite`; the directory is locked
    for the whole run (engine/run_claim.py); a resumed run checks its data and config.yaml
    (engine/resume.py). Returns the run directory.
    """
    checkpoint = None
    if resume:
        checkpoint = load_checkpoint(last_checkpoint(run_dir))
        config = run_config(checkpoint)  # before anything depends on it
    elif config is None:
        raise TrainingError("a configuration is needed to start a run")
    dd, device = start_processes(config.device)
    run_dir = Path(run_dir) if run_dir is not None else default_run_dir(config)
    lock, created = (
        claim_run_dir(run_dir, checkpoint is None, overwrite) if dd.is_main else (None, False)
    )
    try:
        return _train(
            config,
            run_dir,
            checkpoint,
            dd,
            device,
            loss=loss,
            overrides=overrides or [],
            allow_data_change=allow_data_change,
        )
    except BaseException:
        close_run_log(run_dir)
        if lock is not None and checkpoint is None:  # a failed start: set-up files go, results stay
            discard_failed_start(run_dir)
            lock.release()
            if created:
                with contextlib.suppress(OSError):  # only when nothing is left in it
                    run_dir.rmdir()
        raise
    finally:
        close_run_log(run_dir)
        if lock is not None:
            lock.release()


def _train(
    config: TrainConfig,
    run_dir: Path,
    checkpoint: dict | None,
    dd: Distributed,
    device: torch.device,
    *,
    loss: LossFunction,
    overrides: list[str],
    allow_data_change: bool,
) -> Path:
    """The run itself, in a directory this process holds (see `train`)."""
    if dd.is_main and checkpoint is not None:
        keep_edited_config(run_dir, config)
    recorded = config  # last.pt's: config.yaml says it until a checkpoint records --set changes
    if checkpoint is not None:
        config = resumed_config(config, overrides, checkpoint["epoch"])
        if checkpoint["epoch"] >= config.epochs:
            return _finished(run_dir, f"{checkpoint['epoch']} of {config.epochs} epochs")
    if dd.is_main:
        open_run_dir(run_dir, recorded)
    torch.manual_seed(config.seed)

    parts = _build(config, run_dir, checkpoint, dd, device, allow_data_change)
    model, sampler, train_split = parts.model, parts.sampler, parts.train
    if parts.prior_offset is not None:
        loss = logit_adjusted(loss, parts.prior_offset.to(device))
    steps_per_epoch = len(sampler)
    optimizer, scheduler, scaler = build_optimization(model, config, steps_per_epoch, device.type)
    checkpoints = Checkpointer(
        run_dir,
        config,
        parts.classes,
        model,
        optimizer,
        scheduler,
        scaler,
        parts.data,
        writes=dd.is_main,
    )
    state = RunState()
    if checkpoint is not None:
        state = checkpoints.restore(checkpoint)
        log.info("resumed %s at epoch %d, batch %d", run_dir, state.epoch, state.batch)

    network: torch.nn.Module = model
    if dd.enabled:
        network = DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None
        )
    if config.compile:
        network = torch.compile(network)
    step = TrainStep(network, optimizer, scaler, config, device, dd, loss)
    epoch_log = RunLog(run_dir, config.tensorboard) if dd.is_main else None

    # the epoch loop: it ends when the epochs are done or the step budget (max_steps) is spent
    max_steps = config.max_steps or config.epochs * steps_per_epoch
    every = config.checkpoint_every_steps
    if checkpoint is not None and state.step >= max_steps and state.batch < steps_per_epoch:
        return _finished(run_dir, f"{state.step} of {max_steps} steps")
    try:
        with process_group(dd), GracefulStop(dd) as stop:
            # an epoch resumed after its last step (stopped in validation) is still validated
            while state.epoch < config.epochs and (
                state.step < max_steps or state.batch == steps_per_epoch
            ):
                batches = sampler.epoch(state.epoch)
                model.train()
                progress = EpochProgress(steps_per_epoch, state.epoch + 1, state.batch, dd.is_main)
                end = min(steps_per_epoch, state.batch + max_steps - state.step)
                for b, images, valid in iterate_batches(
                    train_split.images, batches, state.batch, end
                ):
                    seed = step_seed(config.seed, state.epoch, b, dd.rank)
                    x, targets, keep = step.batch(images, valid, batches[b], train_split, seed)
                    step_loss = step.update(x, targets, keep)
                    if not math.isfinite(step_loss):
                        raise TrainingError(
                            f"non-finite loss or gradients ({step_loss}) at epoch "
                            f"{state.epoch + 1}, step {b}: stopping without applying it; "
                            + kept_checkpoint(run_dir)
                        )
                    scheduler.step()
                    state.add_step(step_loss)
                    images_seen = x.shape[0] * x.shape[1] * dd.world_size
                    progress.update(b, images_seen, step_loss, scheduler.get_last_lr()[0])
                    stopping = stop.requested()
                    if stopping or (every and state.step % every == 0):
                        checkpoints.save("last.pt", state)
                    if stopping:
                        raise stop.interruption()
                seconds = progress.close()
                if state.batch < steps_per_epoch:  # the step budget ran out inside the epoch
                    checkpoints.save("last.pt", state)
                    break

                # end of epoch: validation, metrics, the best model, a checkpoint
                record = _validate(parts, state, config, device, dd, progress.images, seconds)
                improved = state.finish_epoch(record)
                if epoch_log is not None:
                    epoch_log.write(state.history)
                if improved and dd.is_main:  # best first: a kill before last.pt redoes both
                    checkpoints.save("best.pt", state)
                    export_best(model, config, record, run_dir)
                checkpoints.save("last.pt", state)
                if stop.requested():
                    raise stop.interruption()
    except KeyboardInterrupt:
        if dd.is_main:
            log.warning("interrupted: resume with qcsfer train --resume %s", run_dir)
        raise
    except (OSError, OutputError) as exc:  # a full disk, a file-size limit, a folder removed
        where = f"{exc.filename}: " if isinstance(exc, OSError) and exc.filename else ""
        problem = f"{where}{reason(exc) if isinstance(exc, OSError) else exc}"
        raise write_failure(problem, run_dir) from exc
    return run_dir


class _Parts(NamedTuple):
    train: Split
    val: Split
    held_out: dict[str, Split]
    data: dict[str, dict]  # fingerprints of the splits, kept in every checkpoint
    classes: tuple[str, ...]
    model: QCSModel
    sampler: BranchSampler
    prior_offset: torch.Tensor | None  # tau x log(training prior) under logit adjustment


def _build(
    config: TrainConfig,
    run_dir: Path,
    checkpoint: dict | None,
    dd: Distributed,
    device: torch.device,
    allow_data_change: bool,
) -> _Parts:
    """The data (checked against a resumed run's), the model (warm-started when new) and
    the sampler of its quadruplets."""
    train_split, val_split, held_out = load_splits(config, run_dir if dd.is_main else None)
    data = {
        "train": fingerprint(train_split.records, config.data.root),
        "val": fingerprint(val_split.records, config.data.root),
    }
    if checkpoint is not None:
        check_data(checkpoint.get("data"), data, allow_data_change)
    classes = train_split.records.classes
    model = QCSModel(config.model_config(len(classes)), config.mode).to(device)
    use_fused_attention(model, device.type == "cuda")
    if config.channels_last:
        model = model.to(memory_format=torch.channels_last)
    if checkpoint is None:
        initialize(model, config.init)
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
    if len(sampler) == 0:
        raise TrainingError(
            f"{len(train_split.records)} training images give no full batch of "
            f"{config.batch_size} x {dd.world_size} processes"
        )
    if dd.is_main:
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
            sum(p.numel() for p in model.base.parameters()) / 1e6,
            len(sampler),
        )
    tau = config.logit_adjustment
    offset = prior_offset(train_split.records, train_split.weights, tau, dd.is_main)
    return _Parts(train_split, val_split, held_out, data, classes, model, sampler, offset)


def _validate(
    parts: _Parts,
    state: RunState,
    config: TrainConfig,
    device: torch.device,
    dd: Distributed,
    images: int,
    seconds: float,
) -> EpochRecord:
    """The epoch's record: its mean loss over all processes, Valid and held-out metrics."""
    base = parts.model.base
    offset = parts.prior_offset  # validated with the prior put back: selection by accuracy
    metrics = evaluate_split(base, parts.val, config, device, dd, offset)
    held_out = {
        name: evaluate_split(base, split, config, device, dd, offset)
        for name, split in parts.held_out.items()
    }
    loss_sum, count = dd.reduce(torch.tensor(state.epoch_loss, dtype=torch.float64, device=device))
    return EpochRecord.measured(
        epoch=state.epoch + 1,
        train_loss=float(loss_sum / max(count, 1)),
        metrics=metrics,
        held_out=held_out,
        k=parts.model.k_values(),
        images=images,
        seconds=seconds,
        skipped_images=parts.train.skipped + parts.val.skipped,
    )


def _finished(run_dir: Path, done: str) -> Path:
    """A resumed run with nothing left to do says so, and how to extend it."""
    log.info(
        "%s: the run is already finished (%s); to extend it: "
        "qcsfer train --resume %s --set epochs=N (or max_steps=N)",
        run_dir,
        done,
        run_dir,
    )
    return run_dir
