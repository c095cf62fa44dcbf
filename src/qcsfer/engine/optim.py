"""What moves the weights: the optimiser (optionally inside SAM), the learning-rate schedule
and the fp16 gradient scaler."""

from __future__ import annotations

import math

import torch

from ..config import TrainConfig
from ..errors import ConfigError, TrainingError
from .sam import SAM


def build_optimizer(model: torch.nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
    """Weight decay on weight matrices and kernels only (not norms, biases, tokens, theta);
    the backbone at its own learning rate, its first `frozen_layers` layers not at all."""
    o = config.optim
    decay = 0.0 if o.ignore_weight_decay else o.weight_decay
    freeze_backbone_layers(model, o.frozen_layers)
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    no_decay = ("cls_token", "pos_embed")

    def decays(name: str, p: torch.Tensor) -> bool:
        return p.ndim >= 2 and not name.endswith(no_decay)

    parts = [(named, 1.0)]  # one part when the backbone learns at the common rate
    if o.backbone_lr_scale != 1.0:
        backbone = [(n, p) for n, p in named if ".backbone." in f".{n}"]
        rest = [(n, p) for n, p in named if ".backbone." not in f".{n}"]
        parts = [(rest, 1.0), (backbone, o.backbone_lr_scale)]
    groups = [
        {"params": [p for n, p in part if decays(n, p) == decayed], "lr": o.lr * scale,
         "weight_decay": decay if decayed else 0.0}
        for part, scale in parts
        for decayed in (True, False)
    ]  # fmt: skip
    groups = [g for g in groups if g["params"]]
    if o.name == "adam":
        # torch's Adam adds decay to the gradient (L2); AdamW decouples it.
        base = torch.optim.Adam(groups, betas=o.betas)
    elif o.name == "adamw":
        base = torch.optim.AdamW(groups, betas=o.betas)
    elif o.name == "sgd":
        base = torch.optim.SGD(groups, momentum=o.momentum, nesterov=o.momentum > 0)
    else:
        raise ConfigError(f"unknown optimiser {o.name!r}")
    return SAM(base, o.sam_rho, o.sam_adaptive) if o.sam else base


def freeze_backbone_layers(model: torch.nn.Module, count: int) -> None:
    """Stop the first `count` backbone layers (and the stem) from learning."""
    if not count:
        return
    backbone = getattr(getattr(model, "base", model), "backbone", None)
    layers = getattr(backbone, "layers", None)
    if layers is None:
        raise TrainingError("optim.frozen_layers needs the mobilenet backbone (model.backbone)")
    for layer in list(layers)[:count]:
        layer.requires_grad_(False)


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
    raise ConfigError(f"unknown schedule {s.name!r}")


def build_optimization(
    model: torch.nn.Module, config: TrainConfig, steps_per_epoch: int, device_type: str
) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LambdaLR, torch.amp.GradScaler]:
    """Optimiser, per-step schedule and gradient scaler (enabled for fp16 only)."""
    optimizer = build_optimizer(model, config)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: lr_factor(config, step, steps_per_epoch)
    )
    scaler = torch.amp.GradScaler(device_type, enabled=config.precision == "fp16")
    if scaler.is_enabled() and isinstance(optimizer, SAM):
        raise TrainingError("SAM with fp16 gradient scaling is not supported: use bf16 or fp32")
    return optimizer, scheduler, scaler
