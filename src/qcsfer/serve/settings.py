"""What a `qcsfer serve` process may do: where it listens, how hard it works, what it accepts.

Every setting is declared once, here: its default, its help, its command-line flag and its
environment variable (`QCSFER_` + the flag's name, e.g. `--max-upload-mb` and
`QCSFER_MAX_UPLOAD_MB`). The command line is built from these declarations (`OPTIONS`) and
`ServeSettings.resolve` applies them: a flag given wins, then the environment, then the default.
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from ..errors import UsageError

ENV_PREFIX = "QCSFER_"
MIB = 1024 * 1024


def _setting(default: Any, help: str, *, flag: str = "", unit: int = 1, **extra: Any) -> Any:
    """A field of ServeSettings with what the command line and the environment need."""
    return field(default=default, metadata={"help": help, "flag": flag, "unit": unit, **extra})


@dataclass(frozen=True)
class ServeSettings:
    """Every knob of the server, with defaults safe on a laptop and behind a proxy alike.

    Limits answer with a JSON error instead of doing the work: `max_body_bytes` (413),
    `max_pixels` per image (413, decompression bombs), `max_images` per request (413),
    `max_faces` per image (that image's error). `max_pending` requests are admitted at once
    (decoding, waiting for or in the model); more are answered 503 with Retry-After.
    """

    model: str = _setting("default", "general, ferplus, default, a weights file, a run dir, .onnx")
    backend: str = _setting("auto", "model runtime", choices=("auto", "torch", "onnx"))
    device: str = _setting("cpu", "cpu, cuda, auto (PyTorch backend)")
    detector: str | None = _setting(None, "default face detector (a request may pick another)")
    prior: str | None = _setting(
        None, "default class prior (a request may pick)", choices=("dataset", "balanced")
    )
    host: str = _setting(
        "127.0.0.1",
        "address to listen on; 0.0.0.0 exposes the server to the network (use --token)",
    )
    port: int = _setting(8000, "port to listen on", least=0)
    workers: int = _setting(1, "model threads (and decoding threads)", least=1)
    threads: int = _setting(
        1, "threads inside each model call (CPU use: workers x threads)", least=1
    )
    batch_window_ms: float = _setting(
        5.0, "how long to wait for faces of other requests to batch with (0: no batching)"
    )
    max_batch_faces: int = _setting(64, "faces in one shared model call", least=1)
    max_pending: int = _setting(32, "requests in progress before 503 busy", least=1)
    retry_after_s: int = _setting(
        1, "the Retry-After seconds of a 503 busy", flag="--retry-after", least=0
    )
    timeout_s: float = _setting(30.0, "seconds per request (504 after)", flag="--timeout")
    max_body_bytes: int = _setting(
        20 * MIB, "largest request body, in MiB (413)", flag="--max-upload-mb", unit=MIB, least=1
    )
    max_pixels: int = _setting(40_000_000, "pixels per image (413)", least=1)
    max_images: int = _setting(16, "images per request (413)", least=1)
    max_faces: int = _setting(32, "faces per image", least=1)
    token: str | None = _setting(None, "require 'Authorization: Bearer TOKEN'")
    cors_origins: tuple[str, ...] = _setting(
        (), "allow this web origin", flag="--cors", metavar="ORIGIN"
    )
    allowed_hosts: tuple[str, ...] = _setting(
        (),
        "also answer requests sent to this host name, besides localhost and the --host "
        "address (the rest are refused, against DNS rebinding; '*': any)",
        flag="--allowed-host",
        metavar="NAME",
    )

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
            raise UsageError(f"invalid server settings: {', '.join(bad)}")
        if self.token is not None and not self.token.strip():
            raise UsageError("an empty token would let anyone in: give a real one or none")

    @classmethod
    def resolve(
        cls, given: Mapping[str, Any], environ: Mapping[str, str] | None = None
    ) -> ServeSettings:
        """Settings from the flags given (argparse's namespace as a mapping: `Option.dest`, in
        the flag's unit), else from the environment (`Option.env`), else the defaults.
        UsageError names a bad variable."""
        environ = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for option in OPTIONS:
            value = given.get(option.dest)
            if value in (None, []) and environ.get(option.env, "") != "":
                value = option.parse(environ[option.env])
            if value in (None, []):
                continue
            values[option.name] = option.value(value)
        return cls(**values)


@dataclass(frozen=True)
class Option:
    """One setting as the command line and the environment spell it."""

    name: str  # the ServeSettings field
    flag: str
    dest: str  # the flag's attribute on argparse's namespace
    env: str
    help: str
    default: Any
    kind: Callable[[str], Any]  # a flag's or variable's text -> value, in the flag's unit
    unit: int
    choices: tuple[str, ...] | None
    metavar: str | None
    many: bool  # a list: the flag repeats, the variable separates by commas

    def parse(self, text: str) -> Any:
        """A variable's text as a value, or UsageError naming the variable."""
        try:
            if self.many:
                return [self.kind(part.strip()) for part in text.split(",") if part.strip()]
            value = self.kind(text)
        except ValueError as exc:
            raise UsageError(f"{self.env}={text!r}: {exc}") from None
        if self.choices is not None and value not in self.choices:
            raise UsageError(f"{self.env}={text!r}: expected one of {', '.join(self.choices)}")
        return value

    def value(self, given: Any) -> Any:
        """A flag's or variable's value as the setting holds it."""
        if self.many:
            return tuple(given)
        return given * self.unit if self.unit != 1 else given

    @property
    def shown_default(self) -> str:
        """The default in the flag's unit, for help texts."""
        if self.many or self.default is None:
            return "none"
        return str(self.default // self.unit if self.unit != 1 else self.default)


def _whole(least: int | None) -> Callable[[str], int]:
    def whole(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise UsageError(f"expected a whole number, got {text!r}") from None
        if least is not None and value < least:
            raise UsageError(f"must be at least {least}, got {value}")
        return value

    return whole


def _number(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise UsageError(f"expected a number, got {text!r}") from None


def _kind(default: Any, least: int | None) -> Callable[[str], Any]:
    if isinstance(default, bool):
        raise TypeError("no boolean settings")
    if isinstance(default, int):
        return _whole(least)
    if isinstance(default, float):
        return _number
    return str


def _options() -> tuple[Option, ...]:
    options = []
    for item in dataclasses.fields(ServeSettings):
        meta = item.metadata
        flag = meta["flag"] or "--" + item.name.replace("_", "-")
        options.append(
            Option(
                name=item.name,
                flag=flag,
                dest=flag[2:].replace("-", "_"),
                env=ENV_PREFIX + flag[2:].replace("-", "_").upper(),
                help=meta["help"],
                default=item.default,
                kind=_kind(item.default, meta.get("least")),
                unit=meta["unit"],
                choices=meta.get("choices"),
                metavar=meta.get("metavar", flag[2:].replace("-", "_").upper()),
                many=isinstance(item.default, tuple),
            )
        )
    return tuple(options)


OPTIONS = _options()
TOKEN_ENV = ENV_PREFIX + "TOKEN"
