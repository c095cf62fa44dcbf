"""Model size: parameters, multiply-accumulates (MACs) and token counts, measured by running it.

Counting convention (a fused multiply-add counts once: what papers quote as "GMACs", and what
fvcore-style counters call "FLOPs"):

- one MAC per multiply-add of a weight with an input: Conv2d = out elements x in/groups x kH x kW,
  Linear = out elements x in features; bias additions are not counted;
- ViT attention products: q @ k^T and attn @ v, each N^2 x C per image (N tokens incl. class
  token, summed over heads);
- CSA (training graph only): one cdist per pair matrix, N_row x N_col x C (the same work as a
  matmul), or for the SDPA ablation the two products per direction of each pair;
- not counted: normalisations, activations, softmax, the SE gate's product, residual additions,
  the nearest-neighbour resize, the CSA min/max shift, L2 normalisation and score sums
  (all O(elements), below 0.5% of the total).

With this convention the paper configuration with a 224x224 input (resized to 112x112 before the
stem, so every convolution runs at 112 px) comes to 8.12 GMACs and 40.70M parameters on the
inference path: the reference figures (about 8.1 GMACs, 40.7M). Convolutions and Linear layers
alone give 8.05 GMACs; the attention products add 0.07.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from .base import BaseNetwork, ScaleTokens
from .configs import ModelConfig
from .csa import CrossSimilarityAttention
from .qcs import Mode, QCSModel
from .vit import Attention


@dataclass(frozen=True)
class ComplexityReport:
    """Sizes of one configuration. MACs are per image (inference) or per tuple of G images."""

    config_name: str
    image_size: int
    params_inference: int  # BaseNetwork: what is kept and run at test time
    macs_inference: int  # one image through BaseNetwork
    tokens_per_scale: tuple[int, ...]  # measured at the output of each scale's embedding
    vit_sequence: int  # tokens entering the ViT, class token included
    macs_inference_by_part: dict[str, int] = field(default_factory=dict)
    mode: str | None = None  # training graph counted, if any
    branches: int = 0  # images per training tuple (4 for QCS, 2 for DCS)
    params_training: int | None = None  # QCSModel for `mode`
    macs_training: int | None = None  # one forward of one tuple of `branches` images
    macs_training_by_part: dict[str, int] = field(default_factory=dict)

    @property
    def gmacs_inference(self) -> float:
        return self.macs_inference / 1e9

    def summary(self) -> str:
        lines = [
            f"{self.config_name} @ {self.image_size}px: inference "
            f"{self.params_inference / 1e6:.2f}M params, {self.gmacs_inference:.3f} GMACs/image; "
            f"tokens per scale {list(self.tokens_per_scale)} (ViT sequence {self.vit_sequence})"
        ]
        if self.macs_training is not None and self.params_training is not None:
            lines.append(
                f"training graph ({self.mode}, {self.branches} images): "
                f"{self.params_training / 1e6:.2f}M params, {self.macs_training / 1e9:.3f} GMACs "
                f"per tuple ({self.macs_training / 1e9 / self.branches:.3f} per image)"
            )
        return "\n".join(lines)


def count_parameters(module: nn.Module) -> int:
    """Parameters of a module (shared parameters counted once, as `parameters()` yields them)."""
    return sum(p.numel() for p in module.parameters())


def _conv_macs(module: nn.Conv2d, out: torch.Tensor) -> int:
    per_output = module.in_channels // module.groups
    for k in module.kernel_size:
        per_output *= k
    return out.numel() * per_output


def _attention_macs(module: Attention, x: torch.Tensor) -> int:
    b, n, c = x.shape
    return 2 * b * n * n * c  # q @ k^T and attn @ v, all heads together


def _csa_macs(module: CrossSimilarityAttention, x: torch.Tensor, pairs: Any) -> int:
    _, b, n, c = x.shape  # every branch has N tokens at one scale
    used = [p for p in pairs if p.relation in module.relations]
    if module.config.attention == "sdpa":
        return len(used) * 2 * 2 * b * n * n * c  # both directions, two products each
    return len(used) * b * n * n * c  # one cdist per pair matrix


def count_macs(
    model: nn.Module, inputs: torch.Tensor, part_of: Callable[[str], str] | None = None
) -> tuple[int, dict[str, int]]:
    """Total MACs of `model(inputs)` (whole batch) and a breakdown by part, via forward hooks.

    `part_of` maps a module's qualified name to the part it is reported under (default: the
    first component of the name).
    """
    part_of = part_of or (lambda name: name.split(".")[0] or "model")
    by_part: dict[str, int] = defaultdict(int)
    handles = []

    def make_hook(name: str, module: nn.Module) -> Callable[..., None]:
        part = part_of(name)

        def hook(mod: nn.Module, args: tuple[Any, ...], out: Any) -> None:
            if isinstance(mod, nn.Conv2d):
                by_part[part] += _conv_macs(mod, out)
            elif isinstance(mod, nn.Linear):
                by_part[part] += out.numel() * mod.in_features
            elif isinstance(mod, Attention):
                by_part[part] += _attention_macs(mod, args[0])
            elif isinstance(mod, CrossSimilarityAttention):
                by_part[part] += _csa_macs(mod, args[0], args[1])

        return hook

    for name, module in model.named_modules():
        if isinstance(module, nn.Conv2d | nn.Linear | Attention | CrossSimilarityAttention):
            handles.append(module.register_forward_hook(make_hook(name, module)))
    try:
        with torch.no_grad():
            model(inputs)
    finally:
        for handle in handles:
            handle.remove()
    return sum(by_part.values()), dict(by_part)


def _measure_tokens(base: BaseNetwork, images: torch.Tensor) -> tuple[int, ...]:
    counts: list[int] = []
    handles = [
        m.register_forward_hook(lambda _m, _a, out: counts.append(out.shape[1]))
        for m in base.modules()
        if isinstance(m, ScaleTokens)
    ]
    try:
        with torch.no_grad():
            base.embed(images)
    finally:
        for handle in handles:
            handle.remove()
    return tuple(counts)


def _base_part(name: str) -> str:
    """Group the base network's modules as backbone / tokens / vit."""
    parts = name.split(".")
    return parts[0] if parts[0] != "base" else parts[1]


def measure_complexity(
    model: ModelConfig | BaseNetwork | QCSModel,
    mode: Mode | None = "qcs",
    image_size: int | None = None,
) -> ComplexityReport:
    """Count a configuration (built here) or an existing model by running one input through it.

    Given a config, `mode` picks the training graph also measured (None: inference only); a
    BaseNetwork is measured alone, a QCSModel with its own mode. Measured in eval mode with
    batch 1 (one image, or one tuple of G images for training); MACs do not depend on the mode.
    The input side defaults to `config.image_size` (the network resizes to `backbone_size`
    itself, so a 224 px input is counted at 112 px from the stem on).
    """
    if isinstance(model, ModelConfig):
        torch.manual_seed(0)
        model = BaseNetwork(model) if mode is None else QCSModel(model, mode)
    training = model if isinstance(model, QCSModel) else None
    base = model.base if isinstance(model, QCSModel) else model
    config = base.config
    size = image_size or config.image_size
    was_training = model.training
    model.eval()
    try:
        image = torch.randn(1, config.in_channels, size, size)
        macs_inference, base_parts = count_macs(base, image)
        report: dict[str, Any] = {
            "config_name": config.name,
            "image_size": size,
            "params_inference": count_parameters(base),
            "macs_inference": macs_inference,
            "macs_inference_by_part": base_parts,
            "tokens_per_scale": _measure_tokens(base, image),
            "vit_sequence": base.vit.pos_embed.shape[1],
        }
        if training is not None:
            images = torch.randn(training.branches, 1, config.in_channels, size, size)
            macs, parts = count_macs(training, images, part_of=_base_part)
            report.update(
                mode=training.mode,
                branches=training.branches,
                params_training=count_parameters(training),
                macs_training=macs,
                macs_training_by_part=parts,
            )
    finally:
        model.train(was_training)
    return ComplexityReport(**report)
