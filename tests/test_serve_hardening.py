"""The server under slow and heavy clients, its Host check and its exit codes (issue 27).

Slow clients are raw sockets on loopback, a handful at a time, each done within seconds.
"""

from __future__ import annotations

import base64
import contextlib
import http.client
import io
import json
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import replace

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("fastapi")
import uvicorn
from fastapi.testclient import TestClient

from qcsfer.exits import Terminated
from qcsfer.inference.recognizer import ExpressionRecognizer
from qcsfer.serve import app as app_module
from qcsfer.serve import service as service_module
from qcsfer.serve.app import create_app
from qcsfer.serve.hosts import HostPolicy
from qcsfer.serve.settings import ServeSettings

SETTINGS = ServeSettings(  # TestClient sends Host: testserver
    workers=1, batch_window_ms=2.0, timeout_s=600, allowed_hosts=("testserver",)
)


@pytest.fixture(scope="module")
def recognizer() -> ExpressionRecognizer:
    return ExpressionRecognizer("ferplus")  # the small model: fast; the API is the same


def png(width: int, height: int) -> bytes:
    pixels = np.random.default_rng(0).integers(0, 255, (height, width, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "PNG")
    return buffer.getvalue()


def json_image(data: bytes) -> bytes:
    return json.dumps({"images": [{"name": "x.png", "data": base64.b64encode(data).decode()}]})


@contextlib.contextmanager
def running(recognizer: ExpressionRecognizer, **changes) -> Iterator[tuple[int, object]]:
    """A real server on a free loopback port, in a thread: (port, its app)."""
    app = create_app(replace(SETTINGS, **changes), recognizer)
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [listener]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not server.started and thread.is_alive() and time.monotonic() < deadline:
        time.sleep(0.02)
    assert server.started, "the test server did not start"
    try:
        yield listener.getsockname()[1], app
    finally:
        server.should_exit = True
        thread.join(timeout=30)
        listener.close()


def get(port: int, path: str, host: str = "127.0.0.1") -> tuple[int, dict]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        connection.request("GET", path, headers={"Host": host})
        response = connection.getresponse()
        return response.status, json.loads(response.read())
    finally:
        connection.close()


class SlowSender:
    """A client declaring a 100 000-byte JSON body and sending one byte every 0.2 s."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=15)
        self.sock.sendall(
            b"POST /v1/predict HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            b"Content-Type: application/json\r\nContent-Length: 100000\r\n\r\n{"
        )
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._trickle, daemon=True)
        self.thread.start()

    def _trickle(self) -> None:
        while not self.stop.wait(0.2):
            try:
                self.sock.sendall(b" ")
            except OSError:  # the server answered and closed
                return

    def answer(self) -> bytes:
        """What the server sent before closing (waits at most the socket timeout)."""
        received = b""
        with contextlib.suppress(OSError):
            while chunk := self.sock.recv(4096):
                received += chunk
        self.stop.set()
        self.sock.close()
        return received


# -- item 4: slow bodies hold no place; readiness is honest ------------------------------------


def test_slow_senders_hold_no_place_and_get_408(recognizer: ExpressionRecognizer) -> None:
    with running(recognizer, max_pending=2, timeout_s=4.0) as (port, _):
        senders = [SlowSender(port) for _ in range(4)]  # twice the places
        try:
            time.sleep(0.5)  # all four are now inside, sending
            status, ready = get(port, "/readyz")
            assert status == 200 and ready["pending"] == 0 and ready["receiving"] == 4
            connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
            connection.request(
                "POST",
                "/v1/predict?no_detect=true",
                body=json_image(png(48, 48)),
                headers={"Content-Type": "application/json"},
            )
            response = connection.getresponse()
            document = json.loads(response.read())
            connection.close()
            assert response.status == 200, document  # before: 503 busy, every place taken
            assert len(document["results"][0]["faces"]) == 1
            started = time.monotonic()
            answers = [s.answer() for s in senders]
        finally:
            for sender in senders:
                sender.stop.set()
        assert all(a.startswith(b"HTTP/1.1 408") for a in answers), answers[0][:200]
        assert all(b"body_timeout" in a and b"connection: close" in a.lower() for a in answers)
        assert time.monotonic() - started < 6  # within --timeout of arrival, not at 100 000 s


def test_readyz_is_busy_when_every_place_is_taken(recognizer: ExpressionRecognizer) -> None:
    with TestClient(create_app(replace(SETTINGS, max_pending=1), recognizer)) as client:
        service = client.app.state.service
        assert client.get("/readyz").json()["max_pending"] == 1
        with service.admit():  # a request in progress
            busy = client.get("/readyz")
            assert busy.status_code == 503 and busy.json()["error"]["code"] == "busy"
        assert client.get("/readyz").status_code == 200


# -- item 5: CPU work off the event loop and inside --timeout ----------------------------------


def test_a_json_body_of_many_tiny_values_is_refused_before_parsing(
    recognizer: ExpressionRecognizer,
) -> None:
    body = b'{"images": [' + b",".join(b"0" for _ in range(1_500_000)) + b"]}"
    with TestClient(create_app(SETTINGS, recognizer)) as client:
        started = time.monotonic()
        response = client.post(
            "/v1/predict", content=body, headers={"content-type": "application/json"}
        )
        elapsed = time.monotonic() - started
    assert response.status_code == 413 and response.json()["error"]["code"] == "json_too_complex"
    assert elapsed < 2.0  # counted, never parsed


def test_a_multipart_body_of_many_parts_is_refused(recognizer: ExpressionRecognizer) -> None:
    part = b'--b\r\nContent-Disposition: form-data; name="x"\r\n\r\n1\r\n'
    body = part * 5_000 + b"--b--\r\n"
    with TestClient(create_app(SETTINGS, recognizer)) as client:
        response = client.post(
            "/v1/predict", content=body, headers={"content-type": "multipart/form-data; boundary=b"}
        )
    assert response.status_code == 413 and response.json()["error"]["code"] == "too_many_parts"


def test_parsing_and_drawing_run_in_the_pool_not_the_event_loop(
    recognizer: ExpressionRecognizer, monkeypatch: pytest.MonkeyPatch
) -> None:
    threads: dict[str, str] = {}
    parse, annotate = service_module.parse_body, app_module.annotate

    def parse_where(*args):
        threads["parse"] = threading.current_thread().name
        return parse(*args)

    def annotate_where(*args):
        threads["annotate"] = threading.current_thread().name
        return annotate(*args)

    monkeypatch.setattr(service_module, "parse_body", parse_where)
    monkeypatch.setattr(app_module, "annotate", annotate_where)
    with TestClient(create_app(SETTINGS, recognizer)) as client:
        response = client.post(
            "/v1/predict?no_detect=true&annotated=true",
            content=json_image(png(64, 64)),
            headers={"content-type": "application/json"},
        )
    assert response.status_code == 200 and response.headers["content-type"] == "image/png"
    assert threads["parse"].startswith("qcsfer-prepare"), threads
    assert threads["annotate"].startswith("qcsfer-prepare"), threads


def test_drawing_is_inside_the_timeout(
    recognizer: ExpressionRecognizer, monkeypatch: pytest.MonkeyPatch
) -> None:
    drawing = threading.Event()

    def slow_annotate(rgb, predictions):
        drawing.set()
        time.sleep(3.0)  # a 39-megapixel image takes seconds
        return rgb

    monkeypatch.setattr(app_module, "annotate", slow_annotate)
    with TestClient(create_app(replace(SETTINGS, timeout_s=1.5), recognizer)) as client:
        started = time.monotonic()
        response = client.post(
            "/v1/predict?no_detect=true&annotated=true",
            content=json_image(png(64, 64)),
            headers={"content-type": "application/json"},
        )
        elapsed = time.monotonic() - started
    assert drawing.is_set()  # the deadline passed while drawing
    assert response.status_code == 504 and response.json()["error"]["code"] == "timeout"
    assert elapsed < 2.9  # answered at the deadline, not when drawing ended


# -- item 6: the Host header (DNS rebinding) ----------------------------------------------------


@pytest.mark.parametrize(
    ("bound", "extra", "header", "allowed"),
    [
        ("127.0.0.1", (), "127.0.0.1:8000", True),
        ("127.0.0.1", (), "localhost:8000", True),
        ("127.0.0.1", (), "LocalHost.", True),
        ("127.0.0.1", (), "[::1]:8000", True),
        ("127.0.0.1", (), "app.localhost:8000", True),
        ("127.0.0.1", (), None, True),  # HTTP/1.0 without Host: not a browser
        ("127.0.0.1", (), "rebound.example:8000", False),
        ("127.0.0.1", (), "127.0.0.1.rebound.example", False),
        ("127.0.0.1", (), "192.168.1.5:8000", False),
        ("127.0.0.1", (), "localhost:80x", False),
        ("127.0.0.1", (), "[::1", False),
        ("127.0.0.1", ("Box.LAN",), "box.lan:8000", True),
        ("127.0.0.1", ("*",), "anything.example", True),
        ("192.168.1.5", (), "192.168.1.5:8000", True),
        ("192.168.1.5", (), "192.168.1.6:8000", False),
        ("0.0.0.0", (), "10.1.2.3:8000", True),  # an address is the page's own origin
        ("0.0.0.0", (), socket.gethostname(), True),
        ("0.0.0.0", (), "rebound.example", False),
        ("::", (), "[fe80::1]:8000", True),
    ],
)
def test_host_policy(bound: str, extra: tuple[str, ...], header: str | None, allowed: bool) -> None:
    assert HostPolicy(bound, extra).allows(header) is allowed


def test_a_request_to_another_name_is_refused(recognizer: ExpressionRecognizer) -> None:
    with TestClient(create_app(replace(SETTINGS, allowed_hosts=()), recognizer)) as client:
        refused = client.get("/v1/model")  # TestClient's Host: testserver
        assert refused.status_code == 403
        error = refused.json()["error"]
        assert error["code"] == "host_not_allowed" and "--allowed-host" in error["message"]
        assert error["request_id"] == refused.headers["x-request-id"]
        local = client.get("/v1/model", headers={"Host": "localhost:8000"})
        assert local.status_code == 200 and local.json()["classes"]
    with running(recognizer) as (port, _):  # a real socket and the Host a rebound page sends
        assert get(port, "/healthz", host="rebound.example:8000")[0] == 403
        assert get(port, "/healthz", host=f"127.0.0.1:{port}") == (200, {"status": "ok"})


def test_allowed_host_option() -> None:
    from qcsfer.cli import build_parser

    args = build_parser().parse_args(["serve", "--allowed-host", "a.lan", "--allowed-host", "b"])
    assert args.allowed_host == ["a.lan", "b"]
    assert build_parser().parse_args(["serve"]).allowed_host == []


# -- item 13: exit codes of `qcsfer serve` -----------------------------------------------------


@pytest.mark.parametrize(("signum", "code"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_serve_exits_130_on_sigint_and_143_on_sigterm(signum: int, code: int) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    command = [sys.executable, "-m", "qcsfer", "serve", "--port", str(port), "--model", "ferplus"]
    process = subprocess.Popen(command, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and process.poll() is None:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=2).close()
                break
            except OSError:
                time.sleep(0.2)
        process.send_signal(signum)
        _, errors = process.communicate(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert process.returncode == code, errors[-2000:]
    assert ("interrupted" if code == 130 else "terminated") in errors
    assert "Traceback" not in errors


@pytest.mark.parametrize(
    ("signum", "raised"), [(signal.SIGINT, KeyboardInterrupt), (signal.SIGTERM, Terminated)]
)
def test_serve_reraises_the_signal_that_stopped_it_when_uvicorn_ends_quietly(
    monkeypatch: pytest.MonkeyPatch, signum: int, raised: type[BaseException]
) -> None:
    """uvicorn's own re-raise of the signal can end as a quiet cancellation inside asyncio's
    runner (seen under load: exit 0); the signal the server recorded still decides the exit."""
    import qcsfer.serve as serve_package

    def stopped_quietly(self: uvicorn.Server, sockets: object = None) -> None:
        self.handle_exit(signum, None)  # recorded, then the run returns as if nothing happened

    monkeypatch.setattr(uvicorn.Server, "run", stopped_quietly)
    monkeypatch.setattr(app_module, "load_recognizer", lambda settings: None)
    monkeypatch.setattr(app_module, "create_app", lambda settings, recognizer: None)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with pytest.raises(raised) as caught:
        serve_package.serve(ServeSettings(port=port))
    assert type(caught.value) is raised
