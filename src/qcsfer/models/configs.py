"""Model configurations as data: the paper's exact sizes and smaller ones for CPU, one builder."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from ..errors import ConfigError
from ..typed_data import from_dict

Variant = Literal["SD", "S", "D"]
Normalize = Literal["batch", "sample"]
Attention = Literal["csa", "sdpa"]
Residual = Literal["normed", "prenorm"]
Backbone = Literal["ir", "mobilenet"]


@dataclass(frozen=True)
class CSAConfig:
    """Cross Similarity Attention options (method doc, section 3)."""

    attention: Attention = "csa"  # "sdpa": ordinary cross-attention, the paper's ablation baseline
    variant: Variant = "SD"  # which position scores feed the softmax
    normalize: Normalize = "batch"  # min/max shift over the whole batch (reference) or per sample
    gamma: float = 1.0  # k = 1 + tanh(gamma * theta); the reference has gamma = 1
    # "normed": Y = LN1(X) + A V, out = LN2(Y) + MLP(LN2(Y)) (the reference's QCS models and
    # 7-class DCS); "prenorm": Y = X + A V, out = Y + MLP(LN2(Y)) (its 8-class DCS models).
    residual: Residual = "normed"


@dataclass(frozen=True)
class ModelConfig:
    """Everything that fixes the network's shape. `paper` is the reference configuration."""

    name: str = "custom"
    num_classes: int = 7
    image_size: int = 224  # side of the input the network receives
    backbone_size: int = 112  # nearest-neighbour resize before the backbone (POSTER++ heritage)
    in_channels: int = 3
    # "ir": IR stages 1-3 (the paper); "mobilenet": MobileNet-v1's stride-8/16/32 maps (the
    # face-recognition-pretrained "faceres" port, models/mobilenet.py; `units` unused).
    backbone: Backbone = "ir"
    units: tuple[int, int, int] = (3, 4, 14)
    widths: tuple[int, int, int] = (64, 128, 256)
    # Keep the backbone's BatchNorm statistics fixed in training (a pretrained backbone whose
    # statistics are folded into its weights, as the converted TF.js graph's are).
    frozen_backbone_norm: bool = False
    token_grid: int = 7  # tokens per scale = token_grid ** 2
    dim: int = 768
    heads: int = 8
    mlp_ratio: float = 4.0
    base_depth: int = 2
    cross_depth: int = 1
    base_dropout: float = 0.0
    cross_dropout: float = 0.0
    # Dropout after the ViT attention's output projection: the reference's 8-class ViT has it,
    # its 7-class ViT does not (the default here).
    attn_proj_dropout: bool = False
    # Training-mode BatchNorm per branch (the reference's sequential calls: per-branch
    # statistics, one running-statistics update per branch) instead of over the whole step.
    bn_per_branch: bool = False
    csa: CSAConfig = field(default_factory=CSAConfig)

    @property
    def tokens_per_scale(self) -> int:
        return self.token_grid**2

    @property
    def num_tokens(self) -> int:
        return 3 * self.tokens_per_scale

    def stage_sizes(self) -> tuple[int, int, int]:
        """Spatial side of the three backbone stage maps."""
        if self.backbone == "mobilenet":  # strides 8, 16, 32 with TensorFlow's SAME padding
            return tuple(math.ceil(self.backbone_size / s) for s in (8, 16, 32))  # type: ignore[return-value]
        sizes, s = [], self.backbone_size
        for _ in range(3):  # each stage starts with a stride-2 conv (padding 1): ceil(s / 2)
            s = math.ceil(s / 2)
            sizes.append(s)
        return tuple(sizes)

    def replace(self, **changes: Any) -> ModelConfig:
        """A copy with changes (validated); a `csa` mapping changes only the keys it names."""
        data = self.to_dict()
        if isinstance(changes.get("csa"), dict):
            changes = {**changes, "csa": {**data["csa"], **changes["csa"]}}
        return ModelConfig.from_dict({**data, **changes})

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ModelConfig:
        """From saved or overriding data, keys and types checked (`qcsfer.typed_data`)."""
        return from_dict(cls, data, "model")


# The reference: IR-50 stages 1-3 at 112 px (input 224), 3 x 49 tokens of 768 channels.
PAPER = ModelConfig(name="paper")
# CPU configurations for small faces (FERPlus is 48 px): the same topology, with 3 x 36 tokens
# from a narrower, shallower IR network and ViT (trained with attention-projection dropout).
SMALL = PAPER.replace(
    name="small",
    image_size=48,
    backbone_size=48,
    units=(2, 3, 4),
    widths=(32, 64, 128),
    token_grid=6,
    dim=192,
    heads=4,
    attn_proj_dropout=True,
)
TINY = SMALL.replace(name="tiny", units=(1, 2, 2), dim=128, base_depth=1)
# The face-recognition-pretrained MobileNet-v1 (VGGFace2, `qcsfer convert --from tfjs`) at
# 128 px RGB: maps of 16, 8 and 4 px give 3 x 16 tokens; the small ViT of `small` on top.
FACERES = SMALL.replace(
    name="faceres",
    backbone="mobilenet",
    image_size=128,
    backbone_size=128,
    widths=(256, 512, 1024),
    token_grid=4,
    dim=256,
    heads=4,
    frozen_backbone_norm=True,
)

CONFIGS: dict[str, ModelConfig] = {c.name: c for c in (PAPER, SMALL, TINY, FACERES)}


def get_config(name: str, **overrides: Any) -> ModelConfig:
    if name not in CONFIGS:
        raise ConfigError(f"unknown model configuration {name!r}; choose from {sorted(CONFIGS)}")
    return CONFIGS[name].replace(**overrides)
