"""FERPlus ablation with the `tiny` model: baseline vs DCS vs QCS, CSA variants, SDPA.

    python benchmarks/ferplus_ablation.py run [--only NAME ...] [--qcs-epochs 2]
    python benchmarks/ferplus_ablation.py report          # Markdown tables from the results
    python benchmarks/ferplus_ablation.py --suite converged run --qcs-epochs 12
    python benchmarks/ferplus_ablation.py --suite converged report
    python benchmarks/ferplus_ablation.py --suite converged curves   # Valid accuracy curves

Suites. "short" (the default) is the first ablation. "converged" asks whether QCS still wins
once the baseline has levelled off: baseline, DCS, QCS and QCS with SDPA, 3 seeds each, at an
equal image budget long enough for the baseline's Valid curve to flatten (check it with
`curves`); its runs and results live apart (runs/ablation-converged, results/ablation-converged).

Budgets. "equal images": every run pushes the same number of images through the backbone, so a
QCS anchor-epoch (4 images per anchor) is matched by 4 baseline or 2 DCS anchor-epochs.
"equal anchor epochs" (the paper's comparison): baseline and DCS get as many anchor-epochs as QCS.

Runs go one after another (never two at once on this 2-core machine), each through the
`qcsfer train` command line so the exact command is recorded. A finished run leaves
benchmarks/results/ablation/NAME.json and is skipped next time; an interrupted run resumes from
its checkpoint in runs/ablation/NAME. Select on FERPlus Valid only.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from qcsfer.engine.epoch_record import best_epoch, read_history
from qcsfer.models.qcs import BRANCHES

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results" / "ablation"
RUNS = Path("runs") / "ablation"  # relative to the repository root, where runs are started
RECIPE = "configs/ferplus_tiny_cpu.yaml"
SEEDS = (0, 1, 2)


@dataclass(frozen=True)
class Run:
    name: str
    mode: str
    epochs: int
    seed: int
    group: str  # which table it belongs to
    overrides: dict[str, object] = field(default_factory=dict)

    def command(self, runs: Path = RUNS) -> list[str]:
        settings = {"mode": self.mode, "epochs": self.epochs, "seed": self.seed, **self.overrides}
        args = [sys.executable, "-m", "qcsfer", "train", RECIPE, "--run-dir", str(runs / self.name)]
        for key, value in settings.items():
            args += ["--set", f"{key}={json.dumps(value)}"]
        return args


def plan(qcs_epochs: int) -> list[Run]:
    runs = []
    for seed in SEEDS:
        for mode in ("baseline", "dcs", "qcs"):
            epochs = qcs_epochs * BRANCHES["qcs"] // BRANCHES[mode]  # images per anchor
            runs.append(Run(f"{mode}-images-s{seed}", mode, epochs, seed, "equal images"))
    for seed in SEEDS[:1]:
        for mode in ("baseline", "dcs"):
            runs.append(
                Run(f"{mode}-anchors-s{seed}", mode, qcs_epochs, seed, "equal anchor epochs")
            )
    variants = {
        "qcs-S": {"model_overrides.csa.variant": "S"},
        "qcs-D": {"model_overrides.csa.variant": "D"},
        "qcs-sample-norm": {"model_overrides.csa.normalize": "sample"},
        "qcs-sdpa": {"model_overrides.csa.attention": "sdpa"},
    }
    for name, overrides in variants.items():
        runs.append(Run(f"{name}-s0", "qcs", qcs_epochs, 0, "variants", overrides))
    return runs


def plan_converged(qcs_epochs: int) -> list[Run]:
    """Equal images, 3 seeds: baseline, DCS, QCS (CSA) and QCS with SDPA."""
    runs = []
    for seed in SEEDS:
        for mode in ("baseline", "dcs", "qcs"):
            epochs = qcs_epochs * BRANCHES["qcs"] // BRANCHES[mode]
            runs.append(Run(f"{mode}-images-s{seed}", mode, epochs, seed, "equal images"))
        sdpa = {"model_overrides.csa.attention": "sdpa"}
        runs.append(Run(f"qcs-sdpa-s{seed}", "qcs", qcs_epochs, seed, "variants", sdpa))
    return runs


@dataclass(frozen=True)
class Suite:
    results: Path
    runs: Path  # relative to the repository root
    plan: Callable[[int], list[Run]]


SUITES = {
    "short": Suite(RESULTS, RUNS, plan),
    "converged": Suite(
        RESULTS.with_name("ablation-converged"),
        RUNS.with_name("ablation-converged"),
        plan_converged,
    ),
}


def execute(run: Run, suite: Suite = SUITES["short"]) -> None:
    results, runs = suite.results, suite.runs
    result = results / f"{run.name}.json"
    if result.is_file():
        print(f"{run.name}: done already", file=sys.stderr)
        return
    command = run.command(runs)
    resuming = (REPO / runs / run.name / "last.pt").is_file()
    if resuming:
        command = [sys.executable, "-m", "qcsfer", "train", "--resume", str(runs / run.name)]
    elif (REPO / runs / run.name).exists():  # stopped before its first checkpoint: start again
        command.append("--overwrite")
    print(f"{run.name}: {' '.join(command[2:])}", file=sys.stderr)
    start = time.time()
    subprocess.run(command, check=True, cwd=REPO)
    history = read_history(REPO / runs / run.name)
    best = best_epoch(history)
    record = {
        "name": run.name,
        "group": run.group,
        "mode": run.mode,
        "seed": run.seed,
        "epochs": run.epochs,
        "overrides": run.overrides,
        "command": " ".join(["qcsfer", *run.command(runs)[3:]]),
        "wall_seconds_this_invocation": time.time() - start,
        "train_seconds": sum(h.epoch_seconds for h in history),
        "resumed": resuming,
        "best_epoch": best.epoch,
        "val_accuracy": best.val_accuracy,
        "val_balanced_accuracy": best.val_balanced_accuracy,
        "final_val_accuracy": history[-1].val_accuracy,
        "k": list(history[-1].k),
        # The curve travels with the result: run directories are scratch and get lost.
        "history": [
            {
                "epoch": h.epoch,
                "val_accuracy": h.val_accuracy,
                "val_balanced_accuracy": h.val_balanced_accuracy,
            }
            for h in history
        ],
    }
    results.mkdir(parents=True, exist_ok=True)
    result.write_text(json.dumps(record, indent=2))


def _mean_std(values: list[float]) -> str:
    if len(values) < 2:
        return f"{100 * values[0]:.2f}" if values else "-"
    return f"{100 * statistics.mean(values):.2f} ± {100 * statistics.stdev(values):.2f}"


# (run, compared with): each pair is reported as per-seed differences, run minus other.
COMPARISONS = [
    ("qcs-images", "baseline-images"),
    ("qcs-images", "dcs-images"),
    ("dcs-images", "baseline-images"),
    ("qcs-images", "baseline-anchors"),
    ("qcs-images", "dcs-anchors"),
    ("qcs-S", "qcs-images"),
    ("qcs-D", "qcs-images"),
    ("qcs-sample-norm", "qcs-images"),
    ("qcs-sdpa", "qcs-images"),
]


def _points(diffs: list[float]) -> str:
    text = ", ".join(f"{d:+.2f}" for d in diffs)
    if len(diffs) > 1:
        text += f" (mean {statistics.mean(diffs):+.2f} ± {statistics.stdev(diffs):.2f})"
    return text


def report(suite: Suite = SUITES["short"]) -> str:
    records = [json.loads(p.read_text()) for p in sorted(suite.results.glob("*.json"))]
    by_name: dict[str, list[dict]] = {}
    for r in records:
        by_name.setdefault(r["name"].rsplit("-s", 1)[0], []).append(r)
    # Where the suite has an equal-anchor-epochs table, its QCS runs are the equal-image ones.
    rows = sorted((rs[0]["group"], name, rs) for name, rs in by_name.items())
    if "qcs-images" in by_name and any(row[0] == "equal anchor epochs" for row in rows):
        rows.insert(
            next((i for i, row in enumerate(rows) if row[0] == "equal images"), len(rows)),
            ("equal anchor epochs", "qcs-images (the same runs)", by_name["qcs-images"]),
        )
    lines = [
        "| comparison | run | anchor-epochs | seeds | Valid accuracy (%) "
        "| Valid balanced acc. (%) | last epoch's accuracy (%) | train minutes (each) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for group, name, rs in rows:
        lines.append(
            f"| {group} | {name} | {rs[0]['epochs']} | {len(rs)} "
            f"| {_mean_std([r['val_accuracy'] for r in rs])} "
            f"| {_mean_std([r['val_balanced_accuracy'] for r in rs])} "
            f"| {_mean_std([r['final_val_accuracy'] for r in rs])} "
            f"| {statistics.mean(r['train_seconds'] for r in rs) / 60:.1f} |"
        )
    lines += [
        "",
        "Valid accuracy and balanced accuracy are the best epoch's (chosen on Valid, which flatters"
        " every arm alike); the last epoch's accuracy is unselected.",
        "",
        "Paired differences, seed by seed (points of Valid accuracy / balanced accuracy):",
        "",
    ]
    for run, other in COMPARISONS:
        pairs = [
            (mine, theirs)
            for mine in by_name.get(run, [])
            for theirs in by_name.get(other, [])
            if mine["seed"] == theirs["seed"]
        ]
        if pairs:
            accuracy = [100 * (a["val_accuracy"] - b["val_accuracy"]) for a, b in pairs]
            balanced = [
                100 * (a["val_balanced_accuracy"] - b["val_balanced_accuracy"]) for a, b in pairs
            ]
            lines.append(
                f"- {run} - {other} (seeds {', '.join(str(a['seed']) for a, _ in pairs)}): "
                f"accuracy {_points(accuracy)}; balanced {_points(balanced)}"
            )
    return "\n".join(lines + equal_image_tables(records))


def equal_image_points(record: dict) -> list[tuple[int, float, float]]:
    """(images seen in QCS anchor-epochs, accuracy, balanced accuracy) at each whole QCS epoch.

    The points where every mode has seen the same images, so runs of different modes compare
    at each of them, not only at the end."""
    per_epoch, per_qcs_epoch = BRANCHES[record["mode"]], BRANCHES["qcs"]
    return [
        (h["epoch"] * per_epoch // per_qcs_epoch, h["val_accuracy"], h["val_balanced_accuracy"])
        for h in record.get("history", [])
        if h["epoch"] * per_epoch % per_qcs_epoch == 0
    ]


def equal_image_tables(records: list[dict]) -> list[str]:
    """Each run's accuracy after the same images, and each comparison's mean paired difference
    at every point: where one method leads and where the other catches up."""
    points = {r["name"]: equal_image_points(r) for r in records}
    points = {name: run_points for name, run_points in points.items() if run_points}
    if not points:
        return []
    length = max(len(p) for p in points.values())
    lines = [
        "",
        "Valid accuracy / balanced accuracy (%) after the same number of images, counted in QCS"
        " anchor-epochs:",
        "",
        "| run | " + " | ".join(str(i + 1) for i in range(length)) + " |",
        "|---|" + "---|" * length,
    ]
    for name, run_points in points.items():
        cells = [f"{100 * acc:.2f} / {100 * bal:.2f}" for _, acc, bal in run_points]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines += ["", "Mean paired differences at each of those points (points):", ""]
    for run, other in COMPARISONS:
        seeds = [s for s in SEEDS if f"{run}-s{s}" in points and f"{other}-s{s}" in points]
        pairs = [(points[f"{run}-s{s}"], points[f"{other}-s{s}"]) for s in seeds]
        if pairs:
            width = min(min(len(mine), len(theirs)) for mine, theirs in pairs)
            means = [
                [statistics.mean(100 * (m[i][k] - t[i][k]) for m, t in pairs) for i in range(width)]
                for k in (1, 2)  # accuracy, balanced accuracy
            ]
            accuracy, balanced = (", ".join(f"{d:+.2f}" for d in row) for row in means)
            lines.append(
                f"- {run} - {other} (seeds {', '.join(map(str, seeds))}): accuracy {accuracy}; "
                f"balanced {balanced}"
            )
    return lines


def curves(suite: Suite) -> Path:
    """Valid accuracy against images seen (in QCS anchor-epochs), mean and range over seeds, at
    the equal-image points. Finished runs only, read from their result files."""
    from matplotlib.figure import Figure  # not pyplot: no global backend to switch

    groups: dict[str, list[list[tuple[int, float, float]]]] = {}
    for result in sorted(suite.results.glob("*.json")):
        record = json.loads(result.read_text())
        if not record.get("history"):
            print(f"{result.name}: no history recorded, left out of the curves", file=sys.stderr)
            continue
        groups.setdefault(record["name"].rsplit("-s", 1)[0], []).append(equal_image_points(record))
    figure = Figure(figsize=(7, 4.5))
    axes = figure.subplots()
    for name, runs in sorted(groups.items()):
        length = min(len(r) for r in runs)
        x = [runs[0][i][0] for i in range(length)]
        values = [[100 * r[i][1] for r in runs] for i in range(length)]
        line = axes.plot(x, [statistics.mean(v) for v in values], label=f"{name} ({len(runs)})")
        axes.fill_between(
            x,
            [min(v) for v in values],
            [max(v) for v in values],
            alpha=0.2,
            color=line[0].get_color(),
        )
    axes.set_xlabel("images seen (QCS anchor-epochs)")
    axes.set_ylabel("FERPlus Valid accuracy (%)")
    axes.legend()
    axes.grid(alpha=0.3)
    suite.results.mkdir(parents=True, exist_ok=True)
    path = suite.results / "curves.png"
    figure.savefig(path, dpi=120, bbox_inches="tight")
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--suite", default="short", choices=sorted(SUITES))
    sub = parser.add_subparsers(dest="action", required=True)
    p = sub.add_parser("run")
    p.add_argument("--only", nargs="*", help="run only these names")
    p.add_argument("--qcs-epochs", type=int, default=2)
    sub.add_parser("report")
    sub.add_parser("curves")
    args = parser.parse_args()
    suite = SUITES[args.suite]
    if args.action == "report":
        print(report(suite))
        return
    if args.action == "curves":
        print(curves(suite))
        return
    for run in suite.plan(args.qcs_epochs):
        if not args.only or run.name in args.only:
            execute(run, suite)
    print(report(suite))


if __name__ == "__main__":
    main()
