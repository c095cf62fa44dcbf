"""How a command stops when it is told to: Ctrl-C, SIGTERM, or the reader of its output leaving.

Each ends quietly (one line, no traceback) with the exit code shells use: 128 + the signal
number. SIGTERM raises `Terminated`, a KeyboardInterrupt, so whatever cleans up after Ctrl-C
(the trainer's resumable checkpoint, closing files) also runs for a `kill` or a job scheduler.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
from collections.abc import Callable
from typing import Any

EXIT_INTERRUPTED = 128 + signal.SIGINT  # 130
EXIT_TERMINATED = 128 + signal.SIGTERM  # 143
EXIT_BROKEN_PIPE = 128 + signal.SIGPIPE if hasattr(signal, "SIGPIPE") else 1  # 141


class Terminated(KeyboardInterrupt):
    """SIGTERM arrived: stop as for Ctrl-C, and exit with 143."""


def _raise_terminated(signum: int, frame: Any) -> None:
    raise Terminated


def _silence_stdout() -> None:
    """Point stdout at /dev/null so that the interpreter's final flush cannot fail again."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError, AttributeError):  # stdout without a file descriptor
        pass


def run_until_stopped(command: Callable[[], int], name: str) -> int:
    """`command()`'s exit code, or 130/143/141 when interrupted, terminated or cut off."""
    previous = None
    if threading.current_thread() is threading.main_thread():
        previous = signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        code = command()
        sys.stdout.flush()  # a closed pipe shows up here, not at interpreter exit
        return code
    except BrokenPipeError:
        _silence_stdout()
        return EXIT_BROKEN_PIPE
    except KeyboardInterrupt as exc:
        terminated = isinstance(exc, Terminated)
        print(f"qcsfer {name}: {'terminated' if terminated else 'interrupted'}", file=sys.stderr)
        return EXIT_TERMINATED if terminated else EXIT_INTERRUPTED
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
