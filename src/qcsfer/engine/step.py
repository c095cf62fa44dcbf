"""One training step: a batch of index tuples becomes augmented images, then one optimiser
update. The loss function is a parameter (the paper's `branch_loss` by default).

Every random choice of a step (its augmentation, dropout) comes from the step's own seed, so a
run resumed from any checkpoint continues exactly as if it had never stopped.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import torch

from ..config import TrainConfig
from ..data.splits import Split
from ..data.transforms import train_transform
from ..models.qcs import BranchLogits, branch_loss
from .device import autocast
from .distributed import Distributed
from .sam import SAM

LossFunction = Callable[[BranchLogits, torch.Tensor, torch.Tensor | None], torch.Tensor]


class TrainStep:
    """Forward, backward (twice for SAM: at w, then at the perturbed w), clip, step. Nothing is
    applied unless the loss and gradients are finite on every rank."""

    def __init__(
        self,
        network: torch.nn.Module,
        optimizer: torch.optim.Optimizer,
        scaler: torch.amp.GradScaler,
        config: TrainConfig,
        device: torch.device,
        dd: Distributed,
        loss: LossFunction = branch_loss,
    ) -> None:
        self.network, self.optimizer, self.scaler = network, optimizer, scaler
        self.config, self.device, self.dd, self.loss = config, device, dd, loss
        self.parameters = [p for p in network.parameters() if p.requires_grad]
        self.generator = torch.Generator(device=device)

    def batch(
        self,
        images: torch.Tensor,
        valid: np.ndarray,
        index: np.ndarray,
        split: Split,
        seed: int,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Augmented images (G x B x C x H x W), their targets, and which examples count: one
        with an unreadable image (disk storage) is left out of the loss. `index` is G x B."""
        self.generator.manual_seed(seed)
        torch.manual_seed(seed)  # dropout
        keep = torch.from_numpy(valid.reshape(index.shape).all(0)).to(self.device)
        x = train_transform(
            images.to(self.device, non_blocking=True),
            self.config.preprocessing,
            self.config.augmentation,
            self.generator,
        )
        if self.config.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        targets = split.targets(index.reshape(-1)).to(self.device)
        return x.unflatten(0, index.shape), targets.unflatten(0, index.shape), keep

    def update(self, x: torch.Tensor, targets: torch.Tensor, keep: torch.Tensor) -> float:
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

    def _forward_backward(
        self, x: torch.Tensor, targets: torch.Tensor, keep: torch.Tensor
    ) -> float:
        with autocast(self.device, self.config.precision):
            logits = self.network(x)
        loss = self.loss(logits, targets, keep)
        self.scaler.scale(loss).backward()
        return loss.item()

    def _all_finite(self, value: float) -> bool:
        finite = torch.tensor([float(math.isfinite(value))], device=self.device)
        return bool(self.dd.reduce(finite, "min").item())
