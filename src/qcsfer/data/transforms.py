"""Batched image transforms on uint8 tensors, run where the model runs (CPU or GPU).

Every image of a batch gets its own random augmentation, all in a few tensor ops: one affine
warp (flip, rotation, zoom and the random crop together), colour jitter, image-quality
degradations (`degradations.py`) and random erasing.
Images are stored at `load_size` and the model sees `image_size` (the reference's resize 232 ->
random crop 224; eval: centre crop).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from ..errors import ConfigError
from ..preprocessing import Preprocessing
from .degradations import Degradation, degrade, uniform

# The largest sensible value of each strength, and what it is (a negative one was accepted).
RANGES = {
    "rotation": (180.0, "the largest rotation either way, in degrees"),
    "translate": (0.5, "the largest extra shift, as a fraction of the side"),
    "brightness": (1.0, "the largest change of brightness (factor 1 -/+ it)"),
    "contrast": (1.0, "the largest change of contrast (factor 1 -/+ it)"),
    "saturation": (1.0, "the largest change of saturation (factor 1 -/+ it)"),
    "hue": (0.5, "the largest hue rotation, in turns"),
}


@dataclass(frozen=True)
class Augmentation:
    """Train-time augmentation; zeros switch a part off."""

    hflip: float = 0.5  # probability
    rotation: float = 10.0  # max degrees either way
    zoom: tuple[float, float] = (1.0, 1.0)  # random scale range (> 1 zooms in)
    translate: float = 0.0  # max shift as a fraction of the side, on top of the random crop
    brightness: float = 0.2
    contrast: float = 0.2
    saturation: float = 0.2
    hue: float = 0.1
    erasing: float = 0.5  # probability of erasing one rectangle
    erasing_scale: tuple[float, float] = (0.02, 0.1)  # its area as a fraction of the image
    erasing_ratio: tuple[float, float] = (0.3, 3.3)
    degradation: Degradation = field(default_factory=Degradation)  # blur, JPEG, noise, ...

    def __post_init__(self) -> None:
        """Values that would otherwise be clamped or silently ignored."""
        if not 0 < self.zoom[0] <= self.zoom[1]:
            raise ConfigError(f"augmentation.zoom needs 0 < low <= hi, got {list(self.zoom)}")
        for name in ("erasing", "hflip"):
            if not 0 <= getattr(self, name) <= 1:
                raise ConfigError(
                    f"augmentation.{name} is a probability (0 to 1), got {getattr(self, name)}"
                )
        for name, (high, meaning) in RANGES.items():
            if not 0 <= getattr(self, name) <= high:
                raise ConfigError(
                    f"augmentation.{name} is {meaning}, from 0 to {high}; got {getattr(self, name)}"
                )
        for name, rule in (
            ("erasing_scale", "0 < low <= high <= 1"),
            ("erasing_ratio", "0 < low <= high"),
        ):
            low, top = getattr(self, name)
            if not (0 < low <= top and (top <= 1 or name == "erasing_ratio")):
                raise ConfigError(f"augmentation.{name} needs {rule}, got {[low, top]}")


def normalize(x: torch.Tensor, prep: Preprocessing) -> torch.Tensor:
    """float [0, 1] B x c x H x W -> normalised B x 3 x H x W (gray repeated)."""
    if x.shape[1] != 3:
        x = x.expand(-1, 3, -1, -1)
    mean = torch.tensor(prep.mean, device=x.device, dtype=x.dtype).view(1, -1, 1, 1)
    std = torch.tensor(prep.std, device=x.device, dtype=x.dtype).view(1, -1, 1, 1)
    return (x - mean) / std


def _to_float(images: torch.Tensor, prep: Preprocessing) -> torch.Tensor:
    """uint8 B x c x H x W -> float [0, 1] B x c x L x L (resized only if not stored at L)."""
    x = images.float().div_(255)
    if x.shape[-1] != prep.load_size or x.shape[-2] != prep.load_size:
        x = F.interpolate(x, size=(prep.load_size, prep.load_size), mode="bilinear", antialias=True)
    return x


def eval_transform(images: torch.Tensor, prep: Preprocessing, flip: bool = False) -> torch.Tensor:
    """uint8 B x c x L x L -> centre crop to image_size, normalise (optionally mirrored)."""
    x = _to_float(images, prep)
    start = (prep.load_size - prep.image_size) // 2
    x = x[..., start : start + prep.image_size, start : start + prep.image_size]
    if flip:
        x = x.flip(-1)
    return normalize(x, prep)


def train_transform(
    images: torch.Tensor, prep: Preprocessing, aug: Augmentation, generator: torch.Generator
) -> torch.Tensor:
    """uint8 B x c x L x L -> augmented, normalised B x 3 x S x S."""
    x = _to_float(images, prep)
    x = _random_affine(x, prep, aug, generator)
    x = _color_jitter(x, aug, generator)
    if aug.degradation.enabled:
        x = degrade(x, aug.degradation, generator)
    x = normalize(x, prep)
    if aug.erasing > 0:
        x = _random_erasing(x, aug, generator)
    return x


def _random_affine(
    x: torch.Tensor, prep: Preprocessing, aug: Augmentation, g: torch.Generator
) -> torch.Tensor:
    """Flip, rotation, zoom and crop as one warp: output pixel -> input location."""
    b, device = x.shape[0], x.device
    crop = prep.image_size / prep.load_size  # the output window covers this fraction of the input
    angle = uniform(b, -aug.rotation, aug.rotation, g, device) * (math.pi / 180)
    scale = crop / uniform(b, aug.zoom[0], aug.zoom[1], g, device)
    flip = torch.where(torch.rand(b, generator=g, device=device) < aug.hflip, -1.0, 1.0)
    # Random crop: the window moves within the loaded image; plus optional extra translation.
    slack = (1 - crop) + 2 * aug.translate
    shift = (torch.rand(b, 2, generator=g, device=device) * 2 - 1) * slack
    cos, sin = torch.cos(angle) * scale, torch.sin(angle) * scale
    theta = torch.stack(
        [
            torch.stack([cos * flip, -sin, shift[:, 0]], dim=1),
            torch.stack([sin * flip, cos, shift[:, 1]], dim=1),
        ],
        dim=1,
    )
    grid = F.affine_grid(
        theta, [b, x.shape[1], prep.image_size, prep.image_size], align_corners=False
    )
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=False)


def _gray(x: torch.Tensor) -> torch.Tensor:
    if x.shape[1] == 1:
        return x
    return 0.299 * x[:, 0:1] + 0.587 * x[:, 1:2] + 0.114 * x[:, 2:3]


def _color_jitter(x: torch.Tensor, aug: Augmentation, g: torch.Generator) -> torch.Tensor:
    """Brightness, contrast, saturation and hue (the latter two only for colour images)."""
    b, device = x.shape[0], x.device

    def factor(strength: float) -> torch.Tensor:
        return uniform(b, 1 - strength, 1 + strength, g, device).view(b, 1, 1, 1)

    if aug.brightness:
        x = x * factor(aug.brightness)
    if aug.contrast:
        mean = _gray(x).mean(dim=(1, 2, 3), keepdim=True)
        x = (x - mean) * factor(aug.contrast) + mean
    if x.shape[1] == 3 and aug.saturation:
        gray = _gray(x)
        x = (x - gray) * factor(aug.saturation) + gray
    if x.shape[1] == 3 and aug.hue:
        x = _rotate_hue(x, uniform(b, -aug.hue, aug.hue, g, device) * 2 * math.pi)
    return x.clamp_(0, 1)


def _rotate_hue(x: torch.Tensor, angle: torch.Tensor) -> torch.Tensor:
    """Rotate the chroma plane in YIQ space by `angle` radians per image."""
    to_yiq = torch.tensor(
        [[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]], device=x.device
    )
    from_yiq = torch.linalg.inv(to_yiq)
    cos, sin = torch.cos(angle), torch.sin(angle)
    one, zero = torch.ones_like(cos), torch.zeros_like(cos)
    rotation = torch.stack(
        [
            torch.stack([one, zero, zero], -1),
            torch.stack([zero, cos, -sin], -1),
            torch.stack([zero, sin, cos], -1),
        ],
        dim=1,
    )
    matrix = from_yiq @ rotation @ to_yiq  # B x 3 x 3
    return torch.einsum("bij,bjhw->bihw", matrix, x)


def _random_erasing(x: torch.Tensor, aug: Augmentation, g: torch.Generator) -> torch.Tensor:
    """Zero (the normalised mean) one random rectangle per selected image."""
    b, _, h, w = x.shape
    device = x.device
    area = uniform(b, *aug.erasing_scale, g, device) * h * w
    log_ratio = uniform(
        b, math.log(aug.erasing_ratio[0]), math.log(aug.erasing_ratio[1]), g, device
    )
    ratio = torch.exp(log_ratio)
    eh = torch.sqrt(area * ratio).round().clamp(1, h)
    ew = torch.sqrt(area / ratio).round().clamp(1, w)
    top = (torch.rand(b, generator=g, device=device) * (h - eh + 1)).floor()
    left = (torch.rand(b, generator=g, device=device) * (w - ew + 1)).floor()
    chosen = torch.rand(b, generator=g, device=device) < aug.erasing
    rows = torch.arange(h, device=device).view(1, h, 1)
    cols = torch.arange(w, device=device).view(1, 1, w)
    inside = (
        (rows >= top.view(b, 1, 1))
        & (rows < (top + eh).view(b, 1, 1))
        & (cols >= left.view(b, 1, 1))
        & (cols < (left + ew).view(b, 1, 1))
        & chosen.view(b, 1, 1)
    )
    return x.masked_fill(inside.unsqueeze(1), 0.0)
