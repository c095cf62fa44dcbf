"""The training run: baseline, DCS and QCS in one loop, single process to multi-node DDP.

Reads top to bottom: set-up (processes, run folder, data, model, optimiser, resumed state),
then the epoch loop (steps, periodic checkpoints, validation, best model). The parts live in
their own modules: data/splits.py (images and batches), step.py (one update; the loss is a
parameter), optim.py, checkpoint.py, distributed.py and runlog.py.

Reproducibility rule: every random choice of a step (which images, their augmentation,
dropout) is a pure function of (seed, epoch, step, rank), so a run resumed from any checkpoint
continues exactly as if it had never stopped.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path

import torch
from torch.nn.parallel import DistributedDataParallel

from ..config import TrainConfig
from ..data.sampling import BranchSampler
from ..data.splits import iterate_batches, load_splits
from ..errors import TrainingError
from ..models.qcs import QCSModel, branch_loss
from ..models.vit import use_fused_attention
from .checkpoint import Checkpointer, RunState, load_checkpoint, run_config
from .distributed import GracefulStop, process_group, start_processes, step_seed
from .evaluate import evaluate_split
from .optim import build_optimization
from .runlog import EpochProgress, RunLog, default_run_dir, epoch_record, export_best, open_run_dir
from .step import LossFunction, TrainStep
from .warm_start import initialize

log = logging.getLogger("qcsfer.train")


def train(
    config: TrainConfig | None = None,
    run_dir: Path | None = None,
    resume: bool = False,
    *,
    loss: LossFunction = branch_loss,
) -> Path:
    """Train, or with `resume` continue run_dir/last.pt under the run's own configuration.

    Returns the run directory.
    """
    checkpoint = None
    if resume:
        checkpoint = load_checkpoint(_last_checkpoint(run_dir))
        config = run_config(checkpoint)  # before anything depends on it
    elif config is None:
        raise TrainingError("a configuration is needed to start a run")
    dd, device = start_processes(config.device)
    run_dir = Path(run_dir) if run_dir is not None else default_run_dir(config)
    if dd.is_main:
        open_run_dir(run_dir, config)
    torch.manual_seed(config.seed)

    # data, model, optimiser
    train_split, val_split, held_out = load_splits(config, run_dir if dd.is_main else None)
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
    steps_per_epoch = len(sampler)
    if steps_per_epoch == 0:
        raise TrainingError(
            f"{len(train_split.records)} training images give no full batch of "
            f"{config.batch_size} x {dd.world_size} processes"
        )
    optimizer, scheduler, scaler = build_optimization(model, config, steps_per_epoch, device.type)
    checkpoints = Checkpointer(
        run_dir, config, classes, model, optimizer, scheduler, scaler, writes=dd.is_main
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
    runlog = RunLog(run_dir, config.tensorboard) if dd.is_main else None
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
            steps_per_epoch,
        )

    # the epoch loop: it ends when the epochs are done or the step budget (max_steps) is spent
    max_steps = config.max_steps or config.epochs * steps_per_epoch
    every = config.checkpoint_every_steps
    try:
        with process_group(dd), GracefulStop(dd) as stop:
            while state.epoch < config.epochs and state.step < max_steps:
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
                            f"{state.epoch + 1}, step {b}: stopping without applying it; the "
                            f"last good checkpoint {run_dir / 'last.pt'} is kept"
                        )
                    scheduler.step()
                    state.add_step(step_loss)
                    images_seen = x.shape[0] * x.shape[1] * dd.world_size
                    progress.update(b, images_seen, step_loss, scheduler.get_last_lr()[0])
                    stopping = stop.requested()
                    if stopping or (every and state.step % every == 0):
                        checkpoints.save("last.pt", state)
                    if stopping:
                        raise KeyboardInterrupt
                seconds = progress.close()
                if state.batch < steps_per_epoch:  # the step budget ran out inside the epoch
                    checkpoints.save("last.pt", state)
                    break

                # end of epoch: validation, metrics, the best model, a checkpoint
                metrics = evaluate_split(model.base, val_split, config, device, dd)
                held_out_metrics = {
                    name: evaluate_split(model.base, split, config, device, dd)
                    for name, split in held_out.items()
                }
                epoch_loss = torch.tensor(state.epoch_loss, dtype=torch.float64, device=device)
                loss_sum, count = dd.reduce(epoch_loss)
                record = epoch_record(
                    epoch=state.epoch + 1,
                    train_loss=float(loss_sum / max(count, 1)),
                    metrics=metrics,
                    held_out=held_out_metrics,
                    k=model.k_values(),
                    images=progress.images,
                    seconds=seconds,
                    skipped_images=train_split.skipped + val_split.skipped,
                )
                improved = state.finish_epoch(record)
                if runlog is not None:
                    runlog.write(state.history)
                if improved and dd.is_main:  # best first: a kill before last.pt redoes both
                    checkpoints.save("best.pt", state)
                    export_best(model, config, record, run_dir)
                checkpoints.save("last.pt", state)
                if stop.requested():
                    raise KeyboardInterrupt
    except KeyboardInterrupt:
        if dd.is_main:
            log.warning("interrupted: resume with qcsfer train --resume %s", run_dir)
        raise
    return run_dir


def _last_checkpoint(run_dir: Path | None) -> Path:
    if run_dir is None:
        raise TrainingError("resuming needs the run directory")
    last = Path(run_dir) / "last.pt"
    if not last.is_file():
        raise TrainingError(f"cannot resume: {last} does not exist")
    return last
