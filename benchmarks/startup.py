"""Start-up: what `qcsfer predict` pays before its first face, and how much of it is the model.

    python benchmarks/startup.py [--model default] [--repeats 7]

Two numbers, each the median of `--repeats` fresh processes (so nothing is warm in Python):
- model load: `load_model(MODEL)` alone, timed inside a process that has already imported torch
  (what reading the weights costs: building the network, reading and checking the tensors);
- predict: the wall time of a whole `python -m qcsfer predict IMAGE --no-detect` process
  (interpreter, imports, model, one face, output).

Prints a Markdown table row with the date and machine, for docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import os
import platform
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
start = time.perf_counter()
load_model(sys.argv[1])
print(time.perf_counter() - start)
"""


def model_load_seconds(model: str) -> float:
    out = subprocess.run(
        [sys.executable, "-c", LOAD, model], capture_output=True, text=True, check=True
    )
    return float(out.stdout.strip().splitlines()[-1])


def predict_seconds(model: str) -> float:
    command = [sys.executable, "-m", "qcsfer", "-q", "predict", str(IMAGE), "--no-detect"]
    start = time.perf_counter()
    subprocess.run(
        [*command, "--model", model, "--format", "json"], capture_output=True, check=True
    )
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="default")
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()
    loads = [model_load_seconds(args.model) for _ in range(args.repeats)]
    predicts = [predict_seconds(args.model) for _ in range(args.repeats)]
    machine = f"{platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}"
    print("| date | model | model load (ms) | predict, whole process (s) | machine |")
    print("|---|---|---|---|---|")
    print(
        f"| {date.today()} | {args.model} | {1000 * statistics.median(loads):.0f} "
        f"(min {1000 * min(loads):.0f}) | {statistics.median(predicts):.2f} "
        f"(min {min(predicts):.2f}) | {machine} |"
    )


if __name__ == "__main__":
    main()
