"""`qcsfer serve` processes for the load test (`serve_load.py`): started on a free localhost
port and waited for until ready, and their resident memory (VmRSS), sampled as they serve."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections import Counter
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
HOST = "127.0.0.1"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return sock.getsockname()[1]


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def start_server(extra: list[str], workers: int, max_pending: int) -> tuple[subprocess.Popen, int]:
    port = free_port()
    command = [sys.executable, "-m", "qcsfer", "-q", "serve", "--host", HOST, "--port", str(port)]
    command += ["--workers", str(workers), "--max-pending", str(max_pending), *extra]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO / "src"), *sys.path])}
    # The server's log goes to a file: an undrained pipe fills (64 KB, some 250 access-log
    # lines) and then blocks the server's event loop on its next log line.
    with tempfile.NamedTemporaryFile(
        "w", prefix="qcsfer-serve-", suffix=".log", delete=False
    ) as log:
        process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=log)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server exited: {Path(log.name).read_text()[-2000:]}")
        try:
            with urllib.request.urlopen(f"http://{HOST}:{port}/readyz", timeout=5) as response:
                if response.status == 200:
                    return process, port
        except OSError:
            time.sleep(0.5)
    process.kill()
    raise RuntimeError("server not ready after 300 s")


class MemorySampler:
    """Each server's VmRSS every `every` seconds, with the requests it had answered by then."""

    def __init__(self, servers: dict[str, tuple[subprocess.Popen, int]], every: float) -> None:
        self.servers = servers
        self.every = every
        self.answered: Counter = Counter()  # mode -> 200s so far (run_level adds to it)
        self.series: dict[str, list[dict]] = {mode: [] for mode in servers}
        self._start = time.monotonic()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> MemorySampler:
        self._sample()
        if self.every > 0:
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()
        self._sample()

    def _run(self) -> None:
        while not self._stop.wait(self.every):
            self._sample()

    def _sample(self) -> None:
        seconds = round(time.monotonic() - self._start, 1)
        for mode, (process, _) in self.servers.items():
            if process.poll() is None:
                row = {"s": seconds, "answered": self.answered[mode], "rss_mb": rss_mb(process.pid)}
                self.series[mode].append(row)
