"""`qcsfer serve`: an HTTP API and a web page (uploads and live webcam) for the recognizer.

Needs the optional extra: pip install 'qcsfer[serve]' (FastAPI, uvicorn, python-multipart).
The application itself: `qcsfer.serve.app.create_app(settings)`.
"""

from __future__ import annotations

import ipaddress
import logging
import signal
import socket
import sys
from types import FrameType

from ..errors import UsageError
from ..exits import Terminated
from .settings import ServeSettings

__all__ = ["ServeSettings", "serve"]


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def serve(settings: ServeSettings) -> None:
    """Run the server in the foreground until Ctrl-C or SIGTERM, which propagate (as
    KeyboardInterrupt / `exits.Terminated`) once it has shut down, for exit codes 130 / 143."""
    import uvicorn

    from .app import create_app, load_recognizer

    _check_can_listen(settings.host, settings.port)
    logging.getLogger("qcsfer.serve.access").setLevel(logging.INFO)
    _limit_torch_threads(settings.threads)
    if not is_loopback(settings.host):
        logging.getLogger("qcsfer.serve").warning(
            "listening on %s: reachable from other machines%s",
            settings.host,
            "" if settings.token else " and WITHOUT a token (anyone can use it)",
        )
    recognizer = load_recognizer(settings)  # a bad model is a clear error, before listening
    host = f"[{settings.host}]" if ":" in settings.host else settings.host
    print(f"qcsfer serve: http://{host}:{settings.port}/ (Ctrl-C stops)", file=sys.stderr)
    config = uvicorn.Config(
        create_app(settings, recognizer),
        host=settings.host,
        port=settings.port,
        access_log=False,  # ours has request ids and timings
        log_level="warning",
        timeout_graceful_shutdown=5,
    )
    # Not uvicorn.run: it swallows the KeyboardInterrupt that uvicorn.Server raises again after
    # a graceful shutdown on SIGINT/SIGTERM, and the command then exited 0 instead of 130/143.
    server = _signal_recording_server()(config)
    server.run()
    # uvicorn re-raises the signal after shutting down, but inside asyncio's runner, whose own
    # SIGINT handler can turn it into a cancellation that ends quietly (seen under heavy load:
    # exit 0). The signal it recorded decides the exit instead.
    if server.stopped_by == signal.SIGTERM:
        raise Terminated
    if server.stopped_by is not None:
        raise KeyboardInterrupt


def _signal_recording_server() -> type:
    """uvicorn.Server that remembers the first signal that stopped it (imported lazily: the
    serve extra is optional)."""
    import uvicorn

    class SignalRecordingServer(uvicorn.Server):
        stopped_by: int | None = None

        def handle_exit(self, sig: int, frame: FrameType | None) -> None:
            if self.stopped_by is None:
                self.stopped_by = sig
            super().handle_exit(sig, frame)

    return SignalRecordingServer


def _check_can_listen(host: str, port: int) -> None:
    """An unknown host or a port in use, said before the model loads (uvicorn says it after,
    without naming the address)."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    except socket.gaierror as exc:
        raise UsageError(f"--host {host}: unknown host name ({exc.strerror})") from None
    with socket.socket(family, kind, proto) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn binds
        try:
            probe.bind(address)
        except OSError as exc:
            raise UsageError(f"cannot listen on {host}:{port} ({exc.strerror})") from None


def _limit_torch_threads(threads: int) -> None:
    """PyTorch's intra-op threads for this process (ONNX Runtime gets them per session).

    Its default, one per core, makes each call compete with the other model workers and with
    whatever else runs; workers x threads then says how many cores the server uses.
    """
    try:
        import torch
    except ImportError:  # an ONNX-only installation
        return
    torch.set_num_threads(threads)
