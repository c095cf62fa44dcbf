"""Sharpness-Aware Minimisation (Foret et al., 2021) around any torch optimiser.

A step is two forward-backward passes: the first gradient moves the weights to the worst point
within radius rho (`perturb`), the second gradient, taken there, updates the original weights
(`step`). The adaptive variant (ASAM) scales the radius per weight by |w|.
"""

from __future__ import annotations

import torch

from ..errors import ConfigError


class SAM(torch.optim.Optimizer):
    def __init__(
        self, base: torch.optim.Optimizer, rho: float = 0.05, adaptive: bool = False
    ) -> None:
        if rho < 0:
            raise ConfigError(f"rho must be >= 0, got {rho}")
        self.base = base
        self.rho, self.adaptive = rho, adaptive
        # Share the base optimiser's groups and state: schedulers and checkpoints see one object.
        self.param_groups = base.param_groups
        self.defaults = base.defaults
        self.state = base.state
        self._origin: dict[torch.Tensor, torch.Tensor] = {}

    def _params(self):
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is not None:
                    yield p

    @torch.no_grad()
    def perturb(self) -> None:
        """w <- w + rho * g / ||g|| (with the adaptive |w| scaling for ASAM)."""
        params = list(self._params())
        if not params:
            return
        scaled = [(p.abs() if self.adaptive else 1.0) * p.grad for p in params]
        norm = torch.norm(torch.stack([s.norm(2) for s in scaled]), 2)
        scale = self.rho / (norm + 1e-12)
        for p, s in zip(params, scaled, strict=True):
            self._origin[p] = p.detach().clone()
            p.add_(s * (p.abs() if self.adaptive else 1.0) * scale)

    @torch.no_grad()
    def step(self, closure=None) -> None:  # type: ignore[override]
        """Restore the weights exactly, then let the base optimiser use the second gradient."""
        if closure is not None:
            raise ValueError("SAM here is driven explicitly: call perturb(), backward, then step()")
        self.restore()
        self.base.step()

    @torch.no_grad()
    def restore(self) -> None:
        """Put back the weights saved by perturb() (nothing to do if there are none)."""
        for p, origin in self._origin.items():
            p.copy_(origin)
        self._origin.clear()

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.base.zero_grad(set_to_none)

    def state_dict(self) -> dict:
        return self.base.state_dict()

    def load_state_dict(self, state_dict: dict) -> None:
        self.base.load_state_dict(state_dict)
