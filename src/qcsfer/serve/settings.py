"""What a `qcsfer serve` process may do: where it listens, how hard it works, what it accepts."""

from __future__ import annotations

import math
import os
from dataclasses import dataclass

TOKEN_ENV = "QCSFER_TOKEN"


@dataclass(frozen=True)
class ServeSettings:
    """Every knob of the server, with defaults safe on a laptop and behind a proxy alike.

    Limits answer with a JSON error instead of doing the work: `max_body_bytes` (413),
    `max_pixels` per image (413, decompression bombs), `max_images` per request (413),
    `max_faces` per image (that image's error). `max_pending` requests are admitted at once
    (decoding, waiting for or in the model); more are answered 503 with Retry-After.
    """

    model: str = "default"
    backend: str = "auto"
    device: str = "cpu"
    detector: str | None = None  # None: the recognizer's default
    prior: str | None = None  # None: the model's default operating point
    host: str = "127.0.0.1"
    port: int = 8000
    workers: int = 1  # threads running the model (and as many decoding/detecting)
    threads: int = 1  # intra-op threads of each model call (CPU use ~ workers x threads)
    batch_window_ms: float = 5.0  # how long a worker waits for more faces; 0: one request a batch
    max_batch_faces: int = 64
    max_pending: int = 32
    retry_after_s: int = 1
    timeout_s: float = 30.0
    max_body_bytes: int = 20 * 1024 * 1024
    max_pixels: int = 40_000_000
    max_images: int = 16
    max_faces: int = 32
    token: str | None = None
    cors_origins: tuple[str, ...] = ()
    allowed_hosts: tuple[str, ...] = ()  # Host names answered besides the defaults (hosts.py)

    def __post_init__(self) -> None:
        positive = {
            "workers": self.workers,
            "threads": self.threads,
            "max_batch_faces": self.max_batch_faces,
            "max_pending": self.max_pending,
            "max_body_bytes": self.max_body_bytes,
            "max_pixels": self.max_pixels,
            "max_images": self.max_images,
            "max_faces": self.max_faces,
        }
        bad = [f"{name}={value}" for name, value in positive.items() if value < 1]
        times = {"batch_window_ms": self.batch_window_ms, "retry_after_s": self.retry_after_s}
        bad += [f"{name}={value}" for name, value in times.items() if not 0 <= value < math.inf]
        if not 0 < self.timeout_s < math.inf:  # also refuses nan, which passed "<= 0"
            bad.append(f"timeout_s={self.timeout_s}")
        if not 0 <= self.port <= 65535:
            bad.append(f"port={self.port}")
        if bad:
            raise ValueError(f"invalid server settings: {', '.join(bad)}")
        if self.token is not None and not self.token.strip():
            raise ValueError("an empty token would let anyone in: give a real one or none")


def token_from(argument: str | None) -> str | None:
    """The bearer token: the command-line value, else the QCSFER_TOKEN environment variable."""
    return argument if argument is not None else os.environ.get(TOKEN_ENV) or None
