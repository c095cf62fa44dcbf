"""Load test of `qcsfer serve`: N concurrent clients on 127.0.0.1, batched vs one-at-a-time.

Two `qcsfer serve` processes run side by side on free localhost ports: cross-request batching
on, and `--batch-window-ms 0` (one request per model call). For each client count, first one
then the other gets N threads that post the same image as fast as answers come back (a 503
makes a client wait its Retry-After), for `--duration` seconds or `--max-requests` requests,
whichever is first. Reported per level: requests/s and faces/s (answered 200), p50/p95/p99
latency of those, error counts by status, and each server's resident memory (VmRSS) before,
after and every `--sample-every` seconds, beside how many requests it had answered by then.

    python benchmarks/serve_load.py --duration 10 --clients 1 4 16 64
    python benchmarks/serve_load.py --duration 900 --max-requests 1000000 --clients 16 \
        --modes batched --out benchmarks/results/serve_soak.json      # memory soak
    python benchmarks/serve_load.py --payload photo --modes batched --clients 1 4 16 \
        --detectors mtcnn blazeface-back        # whole photos, detection on, per detector

With --detectors, each level runs once per detector (the request's `detector` option), one
after the other on the same server: the detectors side by side under the same machine state.

Only 127.0.0.1 is ever contacted. The numbers depend on whatever else the CPU is doing.
"""

from __future__ import annotations

import argparse
import http.client
import io
import json
import os
import platform
import subprocess
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image
from serve_processes import HOST, MemorySampler, rss_mb, start_server

REPO = Path(__file__).resolve().parents[1]
ASTRONAUT = REPO / "src" / "qcsfer" / "assets" / "astronaut.jpg"
MODES = {"batched": [], "one-at-a-time": ["--batch-window-ms", "0"]}


@dataclass
class Level:
    mode: str
    clients: int
    detector: str | None = None
    seconds: float = 0.0
    ok: int = 0
    faces: int = 0
    statuses: Counter = field(default_factory=Counter)  # non-200 answers and client errors
    latencies_ms: list[float] = field(default_factory=list)

    def row(self) -> dict:
        lat = np.asarray(self.latencies_ms) if self.latencies_ms else np.zeros(1)
        return {
            "mode": self.mode,
            "clients": self.clients,
            "detector": self.detector,
            "requests_per_s": self.ok / self.seconds,
            "faces_per_s": self.faces / self.seconds,
            "p50_ms": float(np.percentile(lat, 50)),
            "p95_ms": float(np.percentile(lat, 95)),
            "p99_ms": float(np.percentile(lat, 99)),
            "ok": self.ok,
            "errors": dict(self.statuses),
        }


def payload(kind: str) -> tuple[bytes, str, str]:
    """(multipart body, content type, query): the whole photo with face detection, or only
    its face crop classified as it is (the model's share of the work)."""
    if kind == "photo":
        image, query = ASTRONAUT.read_bytes(), ""
    else:
        crop = Image.open(ASTRONAUT).convert("RGB").crop((172, 62, 277, 167))
        buffer = io.BytesIO()
        crop.save(buffer, "PNG")
        image, query = buffer.getvalue(), "?no_detect=true"
    boundary = "qcsferloadtest"
    body = (
        (
            f'--{boundary}\r\nContent-Disposition: form-data; name="images"; filename="face"\r\n'
            f"Content-Type: application/octet-stream\r\n\r\n"
        ).encode()
        + image
        + f"\r\n--{boundary}--\r\n".encode()
    )
    return body, f"multipart/form-data; boundary={boundary}", query


def run_level(
    level: Level,
    port: int,
    body: tuple,
    duration: float,
    max_requests: int,
    answered: Counter,
) -> None:
    data, content_type, query = body
    if level.detector is not None:
        query += ("&" if query else "?") + f"detector={level.detector}"
    lock = threading.Lock()
    sent = [0]
    stop_at = time.monotonic() + duration

    def client() -> None:
        connection = http.client.HTTPConnection(HOST, port, timeout=120)
        while time.monotonic() < stop_at:
            with lock:
                if sent[0] >= max_requests:
                    return
                sent[0] += 1
            start = time.perf_counter()
            try:
                connection.request(
                    "POST", "/v1/predict" + query, data, {"Content-Type": content_type}
                )
                response = connection.getresponse()
                answer = response.read()
            except OSError as exc:
                with lock:
                    level.statuses[type(exc).__name__] += 1
                connection.close()
                connection = http.client.HTTPConnection(HOST, port, timeout=120)
                continue
            elapsed = (time.perf_counter() - start) * 1000
            with lock:
                if response.status == 200:
                    level.ok += 1
                    answered[level.mode] += 1
                    level.faces += json.loads(answer)["summary"]["faces"]
                    level.latencies_ms.append(elapsed)
                else:
                    level.statuses[str(response.status)] += 1
            if response.status == 503:
                time.sleep(float(response.getheader("Retry-After", "1")))
        connection.close()

    threads = [threading.Thread(target=client) for _ in range(level.clients)]
    start = time.monotonic()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    level.seconds = time.monotonic() - start


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 4, 16, 64])
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per level")
    parser.add_argument("--max-requests", type=int, default=2000, help="per level")
    parser.add_argument("--payload", choices=["face", "photo"], default="face")
    parser.add_argument(
        "--detectors", nargs="+", default=[None], help="face detectors to compare (photo payload)"
    )
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--max-pending", type=int, default=32)
    parser.add_argument("--modes", nargs="+", choices=list(MODES), default=list(MODES))
    parser.add_argument(
        "--sample-every", type=float, default=15.0, help="seconds between RSS samples (0: off)"
    )
    parser.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "serve_load.json"))
    args = parser.parse_args()

    body = payload(args.payload)
    servers = {
        mode: start_server(MODES[mode], args.workers, args.max_pending) for mode in args.modes
    }
    rows, memory = [], {mode: {"rss_before_mb": rss_mb(p.pid)} for mode, (p, _) in servers.items()}
    sampler = MemorySampler(servers, args.sample_every)
    try:
        with sampler:
            for clients in args.clients:  # modes side by side per level: the same machine state
                for mode, (_, port) in servers.items():
                    for detector in args.detectors:
                        level = Level(mode, clients, detector)
                        run_level(
                            level, port, body, args.duration, args.max_requests, sampler.answered
                        )
                        rows.append(level.row())
                        print(json.dumps(rows[-1]), flush=True)
        for mode, (process, _) in servers.items():
            memory[mode]["rss_after_mb"] = rss_mb(process.pid)
            memory[mode]["series"] = sampler.series[mode]
    finally:
        for mode, (process, _) in servers.items():
            process.terminate()
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:  # reported: a server that ignores SIGTERM
                memory[mode]["stop"] = "no exit 30 s after SIGTERM; killed"
                process.kill()
                process.wait()
    report = {
        "command": " ".join([Path(sys.argv[0]).as_posix(), *sys.argv[1:]]),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, {platform.python_version()}",
        "load_average_at_end": os.getloadavg(),
        "settings": vars(args),
        "levels": rows,
        "memory": memory,
    }
    batched = {
        (r["clients"], r["detector"]): r["requests_per_s"] for r in rows if r["mode"] == "batched"
    }
    single = {
        (r["clients"], r["detector"]): r["requests_per_s"]
        for r in rows
        if r["mode"] == "one-at-a-time"
    }
    report["batched_over_single"] = {
        f"{n} {d}" if d else n: batched[n, d] / single[n, d]
        for n, d in batched
        if single.get((n, d))
    }
    first = args.detectors[0]
    report["over_first_detector"] = {
        f"{r['mode']} {r['clients']} {r['detector']}": r["requests_per_s"] / base["requests_per_s"]
        for r in rows
        for base in rows
        if r["detector"] != first
        and base["detector"] == first
        and (base["mode"], base["clients"]) == (r["mode"], r["clients"])
        and base["requests_per_s"] > 0
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    print(markdown(report))
    return 0


def markdown(report: dict) -> str:
    lines = [
        "| mode | detector | clients | requests/s | faces/s | p50 ms | p95 ms | p99 ms | 200s "
        "| errors |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in report["levels"]:
        errors = ", ".join(f"{k}: {v}" for k, v in sorted(r["errors"].items())) or "0"
        detector = r.get("detector") or "server default"
        lines.append(
            f"| {r['mode']} | {detector} | {r['clients']} | {r['requests_per_s']:.1f} "
            f"| {r['faces_per_s']:.1f} "
            f"| {r['p50_ms']:.0f} | {r['p95_ms']:.0f} | {r['p99_ms']:.0f} | {r['ok']} | {errors} |"
        )
    for mode, m in report["memory"].items():
        lines.append(
            f"\n{mode}: server RSS {m['rss_before_mb']:.0f} MB before, "
            f"{m.get('rss_after_mb', float('nan')):.0f} MB after; {m.get('stop', 'stopped')}"
        )
        marks = by_minute(m.get("series", []))
        if marks:
            lines.append("RSS by minute (answered): " + ", ".join(marks))
    ratios = ", ".join(f"{n} clients {v:.2f}x" for n, v in report["batched_over_single"].items())
    if ratios:
        lines.append(f"\nbatched / one-at-a-time requests/s: {ratios}")
    faster = ", ".join(f"{k}: {v:.2f}x" for k, v in report.get("over_first_detector", {}).items())
    if faster:
        lines.append(f"\nrequests/s over the first detector's: {faster}")
    return "\n".join(lines)


def by_minute(series: list[dict]) -> list[str]:
    """`3:00 512 MB (2,410)`: the first sample at or after each whole minute, and the last."""
    picked, minute = [], 0
    for row in series:
        if row["s"] >= minute * 60:
            picked.append(row)
            minute = int(row["s"] // 60) + 1
    if series and picked[-1] is not series[-1]:
        picked.append(series[-1])
    return [
        f"{int(r['s'] // 60)}:{int(r['s'] % 60):02d} {r['rss_mb']:.0f} MB ({r['answered']:,})"
        for r in picked
    ]


if __name__ == "__main__":
    sys.exit(main())
