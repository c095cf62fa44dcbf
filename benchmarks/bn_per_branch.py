"""The cost of `bn_per_branch`: the reference's per-branch BatchNorm calls vs one batched call.

    python benchmarks/bn_per_branch.py [--config tiny] [--anchors 16] [--steps 4] [--repeats 3]
                                       [--device cpu|cuda] [--threads 1] [--out FILE]

One QCS training step (forward, loss, backward, Adam step) in fp32, the same weights and
images for both variants, measured alternately in one process; prints a Markdown row and
writes benchmarks/results/bn_per_branch.json (or --out). Only the BatchNorm calls differ:
batched (the default) sends all 4B images through the base network at once, per-branch sends
four batches of B as the reference does. On a CPU shared with other work, the process's CPU
time per step (one thread by default) is the fairer measure than wall time; both are reported.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from datetime import date
from pathlib import Path

import torch

from qcsfer.models import QCSModel, branch_loss, get_config

RESULTS = Path(__file__).parent / "results"


def make_step(config_name: str, per_branch: bool, anchors: int, device: torch.device):
    config = get_config(config_name, num_classes=8, bn_per_branch=per_branch)
    torch.manual_seed(0)
    model = QCSModel(config, "qcs").to(device).train()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
    size = config.image_size
    images = torch.randn(4, anchors, 3, size, size, device=device)
    targets = torch.randint(0, 8, (4, anchors), device=device)

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        branch_loss(model(images), targets).backward()
        optimizer.step()

    return step


def seconds_per_step(step, steps: int, device: torch.device) -> tuple[float, float]:
    """(wall seconds, process CPU seconds) per step."""
    step()  # warm-up
    if device.type == "cuda":
        torch.cuda.synchronize()
    wall, cpu = time.perf_counter(), time.process_time()
    for _ in range(steps):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - wall) / steps, (time.process_time() - cpu) / steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", default="tiny")
    parser.add_argument("--anchors", type=int, default=16, help="anchors per step (x4 images)")
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=1, help="CPU threads for torch")
    parser.add_argument(
        "--out", type=Path, default=RESULTS / "bn_per_branch.json", help="the JSON record"
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    steps = {v: make_step(args.config, v, args.anchors, device) for v in (False, True)}
    times: dict[bool, list[tuple[float, float]]] = {False: [], True: []}
    for _ in range(args.repeats):
        for variant, step in steps.items():
            times[variant].append(seconds_per_step(step, args.steps, device))

    def median_ms(variant: bool, which: int) -> float:
        return statistics.median(t[which] for t in times[variant]) * 1000

    measure = 1 if device.type == "cpu" else 0  # CPU time on a CPU, wall time on a GPU
    batched, per_branch = median_ms(False, measure), median_ms(True, measure)
    result = {
        "date": date.today().isoformat(),
        "machine": f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} "
        f"threads, torch {torch.__version__}, {device}",
        "config": args.config,
        "anchors": args.anchors,
        "steps": args.steps,
        "repeats": args.repeats,
        "measure": "process CPU time" if measure else "wall time",
        "batched_ms": round(batched, 1),
        "per_branch_ms": round(per_branch, 1),
        "slowdown": round(per_branch / batched, 3),
        "wall_ms": {"batched": median_ms(False, 0), "per_branch": median_ms(True, 0)},
        "all_seconds (wall, cpu)": {"batched": times[False], "per_branch": times[True]},
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"{result['measure']}, {result['machine']}")
    print("| config | anchors (x4 images) | batched ms/step | per-branch ms/step | cost |")
    print("|---|---|---|---|---|")
    print(
        f"| {args.config} | {args.anchors} | {batched:.1f} | {per_branch:.1f} | "
        f"x{per_branch / batched:.2f} |"
    )


if __name__ == "__main__":
    main()
