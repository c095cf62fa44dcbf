"""Start-up: what `qcsfer predict` pays before its first face, and how much of it is the model.

    python benchmarks/startup.py [--model default] [--repeats 7]
    python benchmarks/startup.py --load-only --model default --model runs/x/best.safetensors

Two numbers, each the median of `--repeats` fresh processes (so nothing is warm in Python):
- model load: `load_model(MODEL)` alone, timed inside a process that has already imported torch
  (what reading the weights costs: building the network, reading and checking the tensors);
- predict: a whole `python -m qcsfer predict IMAGE --no-detect` process (interpreter, imports,
  model, one face, output).
Both as CPU time (user + system, what the work costs even on a machine shared with other jobs)
and wall time. Prints a Markdown table row with the date and machine, for docs/benchmarks.md.
`--load-only`: one process that imports torch, then calls `load_model` 4 times per model and
prints the CPU time of the first call and the median of the other three (cheap on a busy CPU).
"""

from __future__ import annotations

import argparse
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from datetime import date
from pathlib import Path

IMAGE = Path(__file__).resolve().parents[1] / "src" / "qcsfer" / "assets" / "coffee.jpg"
LOAD = """
import sys, time
import torch
from qcsfer.pretrained import load_model
cpu, wall = time.process_time(), time.perf_counter()
load_model(sys.argv[1])
print(time.process_time() - cpu, time.perf_counter() - wall)
"""


def model_load_seconds(model: str) -> tuple[float, float]:
    """(CPU, wall) seconds of load_model in a fresh process."""
    out = subprocess.run(
        [sys.executable, "-c", LOAD, model], capture_output=True, text=True, check=True
    )
    cpu, wall = out.stdout.strip().splitlines()[-1].split()
    return float(cpu), float(wall)


def predict_seconds(model: str) -> tuple[float, float]:
    """(CPU, wall) seconds of a whole predict process."""
    command = [sys.executable, "-m", "qcsfer", "-q", "predict", str(IMAGE), "--no-detect"]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    subprocess.run(
        [*command, "--model", model, "--format", "json"], capture_output=True, check=True
    )
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime
    return cpu, wall


def load_only(models: list[str]) -> None:
    import torch  # noqa: F401 - imported before timing, as every command has it loaded

    from qcsfer.pretrained import load_model

    for model in models:
        cpu = []
        for _ in range(4):
            start = time.process_time()
            load_model(model)
            cpu.append(time.process_time() - start)
        print(
            f"| {date.today()} | {model} | first {1000 * cpu[0]:.0f} ms, then "
            f"{_ms(cpu[1:])} ms CPU | {platform.machine()}, {os.cpu_count()} CPUs |"
        )


def _ms(values: list[float]) -> str:
    return f"{1000 * statistics.median(values):.0f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", action="append", help="repeatable (default: default)")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--load-only", action="store_true")
    args = parser.parse_args()
    models = args.model or ["default"]
    if args.load_only:
        load_only(models)
        return
    args.model = models[0]
    loads = [model_load_seconds(args.model) for _ in range(args.repeats)]
    predicts = [predict_seconds(args.model) for _ in range(args.repeats)]
    machine = f"{platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}"
    print(
        "| date | model | model load, CPU / wall (ms) | predict process, CPU / wall (ms) "
        "| load average | machine |"
    )
    print("|---|---|---|---|---|---|")
    print(
        f"| {date.today()} | {args.model} | {_ms([c for c, _ in loads])} / "
        f"{_ms([w for _, w in loads])} | {_ms([c for c, _ in predicts])} / "
        f"{_ms([w for _, w in predicts])} | {os.getloadavg()[0]:.1f} | {machine} |"
    )


if __name__ == "__main__":
    main()
