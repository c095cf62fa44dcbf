"""Image-quality augmentation: what photos do to faces that FERPlus crops rarely show.

Faces read from people's photos and videos are blurred, compressed, noisy, small or badly
exposed. Training on such copies (each image its own random degradation, batched tensor ops)
is what keeps accuracy up on them. Every part has a probability (0 switches it off and draws
no random numbers, so recipes without it train exactly as before) and a strength range.

Order follows a camera pipeline: exposure (gamma), optics (blur), resolution, compression,
sensor noise last.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..errors import ConfigError


@dataclass(frozen=True)
class Degradation:
    """Probabilities (per image) and strength ranges; all off by default."""

    gamma: float = 0.0  # probability of a gamma change ...
    gamma_range: tuple[float, float] = (0.6, 1.6)  # ... with an exponent log-uniform in this range
    blur: float = 0.0  # probability of a Gaussian blur ...
    blur_sigma: tuple[float, float] = (0.4, 1.8)  # ... sigma in pixels of the model input
    low_resolution: float = 0.0  # probability of a downscale and back ...
    low_resolution_size: tuple[int, int] = (16, 40)  # ... to a side in this range (pixels)
    jpeg: float = 0.0  # probability of JPEG compression ...
    jpeg_quality: tuple[int, int] = (15, 60)  # ... at a quality in this range
    noise: float = 0.0  # probability of Gaussian sensor noise ...
    noise_sigma: tuple[float, float] = (3.0, 20.0)  # ... sigma in 0-255 grey levels

    def __post_init__(self) -> None:
        for name in ("gamma", "blur", "low_resolution", "jpeg", "noise"):
            p = getattr(self, name)
            if not 0 <= p <= 1:
                raise ConfigError(f"degradation.{name} is a probability in [0, 1], got {p}")
        for name in ("gamma_range", "blur_sigma", "low_resolution_size", "jpeg_quality"):
            low, high = getattr(self, name)
            if not 0 < low <= high:
                raise ConfigError(f"degradation.{name} must be 0 < low <= high, got {low, high}")
        if not 1 <= self.jpeg_quality[0] <= self.jpeg_quality[1] <= 100:
            raise ConfigError(
                f"degradation.jpeg_quality must be in 1..100, got {self.jpeg_quality}"
            )
        if not 0 <= self.noise_sigma[0] <= self.noise_sigma[1]:
            raise ConfigError("degradation.noise_sigma must be 0 <= low <= high")

    @property
    def enabled(self) -> bool:
        return any((self.gamma, self.blur, self.low_resolution, self.jpeg, self.noise))


def degrade(x: torch.Tensor, d: Degradation, g: torch.Generator) -> torch.Tensor:
    """float [0, 1] B x C x H x W -> the same, each image degraded at random."""
    x = _some(x, d.gamma, lambda y: _gamma(y, d.gamma_range, g), g)
    x = _some(x, d.blur, lambda y: _gaussian_blur(y, d.blur_sigma, g), g)
    x = _some(x, d.low_resolution, lambda y: _low_resolution(y, d.low_resolution_size, g), g)
    x = _some(x, d.jpeg, lambda y: _jpeg(y, d.jpeg_quality, g), g)
    return _some(x, d.noise, lambda y: _noise(y, d.noise_sigma, g), g)


def _some(
    x: torch.Tensor,
    p: float,
    change: Callable[[torch.Tensor], torch.Tensor],
    g: torch.Generator,
) -> torch.Tensor:
    """`change` applied to the images chosen with probability p (computed for those only)."""
    if not p:
        return x
    chosen = (torch.rand(x.shape[0], generator=g, device=x.device) < p).nonzero().flatten()
    if len(chosen) == 0:
        return x
    x = x.clone()
    x[chosen] = change(x[chosen])
    return x


def uniform(
    n: int, low: float, high: float, g: torch.Generator, device: torch.device
) -> torch.Tensor:
    """n draws from U[low, high) on the generator; the augmentations share it."""
    return torch.rand(n, generator=g, device=device) * (high - low) + low


def _gamma(x: torch.Tensor, bounds: tuple[float, float], g: torch.Generator) -> torch.Tensor:
    log_bounds = (math.log(bounds[0]), math.log(bounds[1]))
    exponent = torch.exp(uniform(x.shape[0], *log_bounds, g, x.device)).view(-1, 1, 1, 1)
    return x.clamp(min=1e-6).pow(exponent)


def _gaussian_blur(
    x: torch.Tensor, bounds: tuple[float, float], g: torch.Generator
) -> torch.Tensor:
    """Separable Gaussian, one sigma per image, as a grouped convolution."""
    b, c, h, w = x.shape
    sigma = uniform(b, *bounds, g, x.device)
    radius = math.ceil(3 * bounds[1])
    offsets = torch.arange(-radius, radius + 1, device=x.device, dtype=x.dtype)
    kernel = torch.exp(-0.5 * (offsets / sigma.view(-1, 1)) ** 2)
    kernel = (kernel / kernel.sum(1, keepdim=True)).repeat_interleave(c, dim=0)  # B*C x K
    flat = x.reshape(1, b * c, h, w)
    flat = F.pad(flat, (radius, radius, radius, radius), mode="replicate")
    flat = F.conv2d(flat, kernel.view(b * c, 1, 1, -1), groups=b * c)
    flat = F.conv2d(flat, kernel.view(b * c, 1, -1, 1), groups=b * c)
    return flat.view(b, c, h, w)


def _low_resolution(x: torch.Tensor, bounds: tuple[int, int], g: torch.Generator) -> torch.Tensor:
    """Down to a random side (antialiased, as a camera or a small face gives) and back up."""
    b, _, h, w = x.shape
    # Sides on a grid of 4 px: a handful of distinct sizes per batch, one resize each.
    grid = torch.arange(bounds[0], bounds[1] + 1, 4, device=x.device)
    sides = grid[torch.randint(len(grid), (b,), generator=g, device=x.device)]
    out = x.clone()
    for side in sides.unique().tolist():
        members = (sides == side).nonzero().flatten()
        small = F.interpolate(x[members], size=(side, side), mode="bilinear", antialias=True)
        out[members] = F.interpolate(small, size=(h, w), mode="bilinear", antialias=True)
    return out


# The JPEG standard's luminance quantisation table (ITU-T T.81, Annex K), row by row.
_LUMINANCE_TABLE = (
    (16, 11, 10, 16, 24, 40, 51, 61),
    (12, 12, 14, 19, 26, 58, 60, 55),
    (14, 13, 16, 24, 40, 57, 69, 56),
    (14, 17, 22, 29, 51, 87, 80, 62),
    (18, 22, 37, 56, 68, 109, 103, 77),
    (24, 35, 55, 64, 81, 104, 113, 92),
    (49, 64, 78, 87, 103, 121, 120, 101),
    (72, 92, 95, 98, 112, 100, 103, 99),
)


def _dct_matrix(device, dtype) -> torch.Tensor:
    """The orthonormal 8-point DCT-II as a matrix: coefficients = D @ block @ D.T."""
    k = torch.arange(8, device=device, dtype=dtype).view(-1, 1)
    n = torch.arange(8, device=device, dtype=dtype).view(1, -1)
    d = torch.cos(math.pi * (2 * n + 1) * k / 16) * math.sqrt(2 / 8)
    d[0] /= math.sqrt(2)
    return d


def _jpeg(x: torch.Tensor, bounds: tuple[int, int], g: torch.Generator) -> torch.Tensor:
    """Baseline JPEG's lossy step: 8x8 block DCT, quantisation at a random quality, inverse.

    Every channel is quantised with the luminance table (no chroma subsampling): blocking and
    ringing as a JPEG file shows them, at tensor speed and without a codec.
    """
    b, c, h, w = x.shape
    quality = torch.randint(bounds[0], bounds[1] + 1, (b,), generator=g, device=x.device).float()
    # The IJG quality scaling of the table.
    scale = torch.where(quality < 50, 5000 / quality, 200 - 2 * quality) / 100
    table = torch.tensor(_LUMINANCE_TABLE, device=x.device, dtype=x.dtype)
    q = (table * scale.view(-1, 1, 1)).round().clamp(1, 255).view(b, 1, 1, 1, 8, 8)
    ph, pw = (-h) % 8, (-w) % 8
    pixels = F.pad(x * 255 - 128, (0, pw, 0, ph), mode="replicate")
    blocks = pixels.unfold(2, 8, 8).unfold(3, 8, 8)  # B x C x H/8 x W/8 x 8 x 8
    d = _dct_matrix(x.device, x.dtype)
    coefficients = (d @ blocks @ d.T / q).round() * q
    restored = d.T @ coefficients @ d
    restored = restored.permute(0, 1, 2, 4, 3, 5).reshape(b, c, h + ph, w + pw)
    return ((restored[..., :h, :w] + 128) / 255).clamp(0, 1)


def _noise(x: torch.Tensor, bounds: tuple[float, float], g: torch.Generator) -> torch.Tensor:
    sigma = uniform(x.shape[0], *bounds, g, x.device).view(-1, 1, 1, 1) / 255
    noise = torch.randn(x.shape, generator=g, device=x.device, dtype=x.dtype)
    return (x + noise * sigma).clamp(0, 1)
