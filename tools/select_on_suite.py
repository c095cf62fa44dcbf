"""Choose a run's checkpoint on the generalization suite, not on FERPlus Valid alone.

    python tools/select_on_suite.py RUN_DIR [--every STEPS] [--datasets ../shared/datasets]
        [--rank-by fitted] [--balanced-strength 1.0] [--export OUT.safetensors]
        [--out benchmarks/results]

Candidates: the run's kept checkpoints (`checkpoints/step-N.pt`, from `keep_checkpoints: true`;
`--every STEPS`: only those at multiples of STEPS, e.g. the epoch ends), `last.pt` unless its
step is among them, and `best.safetensors` (or `best.pt`). The suite's faces are read once
(decoded, and tcce dev's faces found by the default detector: the slow part), then every
candidate reads them (benchmarks/generalization.py's reader), so each candidate costs its
forward passes only.

A training checkpoint has no fitted decision rule, so every candidate is read at the same two
points, from the run's training prior (`qcsfer.data.prior.training_prior` of its recorded
configuration): `dataset`, the logits as trained (strength 0; a logit-adjusted run's prior put
back, -tau, as tools/ship_model.py does), and `balanced`, the logit adjustment at
--balanced-strength (1: the whole prior divided out). The column `fitted` is the best suite
score any strength reaches and that strength (what `tools/calibrate.py --suite` would fit):
candidates are ranked by it unless --rank-by says otherwise, since the shipped model is read at
the strength calibration fits, not at a fixed one (on the first `general` checkpoints strength
1 over-corrected: it ranked step 50 above step 450, which is better at 0 and at its best
strength). It is one more choice made on the dev splits.
Writes selection-RUN.json and .md under --out; --export writes the winner as a weights file
(the whole training graph, like best.safetensors), ready for `tools/calibrate.py OUT --suite`.
The dev splits choose here: report how many candidates were compared.
"""

from __future__ import annotations

import argparse
import datetime
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import torch
from torch import nn

from qcsfer.card import ModelCard, weights_paths
from qcsfer.config import TrainConfig, from_dict
from qcsfer.data.prior import training_prior
from qcsfer.decision import DecisionRule, OperatingPoint
from qcsfer.engine.calibration import score_strengths_by_group
from qcsfer.engine.checkpoint import load_checkpoint, model_from_checkpoint
from qcsfer.errors import QcsferError
from qcsfer.inference.backends import LoadedModel, TorchBackend
from qcsfer.inference.faces import Detector
from qcsfer.inference.recognizer import ExpressionRecognizer
from qcsfer.models.weights import load_weights, network_card, save_weights
from qcsfer.outputs import check_not_an_input

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))
import generalization  # noqa: E402 (the suite's reader, shared with benchmarks/)
from reports import write_report  # noqa: E402
from suite_scores import score_readings, suite_groups  # noqa: E402


@dataclass(frozen=True)
class Candidate:
    name: str  # step-0000050, last, best
    path: Path


def candidates(run_dir: Path, every: int | None = None) -> list[Candidate]:
    """The kept checkpoints in step order (those of steps that are multiples of `every`, when
    given: an epoch's steps keeps the epoch ends), then last.pt (unless a kept one has its
    step), then the run's best weights."""
    kept = sorted((run_dir / "checkpoints").glob("step-*.pt"))
    if every is not None:
        kept = [p for p in kept if int(p.stem.removeprefix("step-")) % every == 0]
    found = [Candidate(p.stem, p) for p in kept]
    last = run_dir / "last.pt"
    if last.is_file() and f"step-{load_checkpoint(last)['step']:07d}" not in {
        c.name for c in found
    }:
        found.append(Candidate("last", last))
    best = run_dir / "best.safetensors"
    best = best if best.is_file() else run_dir / "best.pt"
    if best.is_file():
        found.append(Candidate("best", best))
    if not found:
        raise SystemExit(f"{run_dir}: no checkpoints, last.pt or best weights to compare")
    return found


def load_candidate(candidate: Candidate) -> tuple[nn.Module, dict, list[str], dict]:
    """(the training model, its run's config, classes, where it came from)."""
    if candidate.path.suffix == ".safetensors":
        model, card = load_weights(candidate.path)
        origin = {"epoch": card.provenance.get("epoch")}
        return model, dict(card.provenance["config"]), list(card.classes), origin
    checkpoint = load_checkpoint(candidate.path)
    origin = {"step": checkpoint["step"], "epoch": checkpoint.get("epoch")}
    return model_from_checkpoint(checkpoint), checkpoint["config"], checkpoint["classes"], origin


def selection_rule(config: TrainConfig, balanced_strength: float) -> DecisionRule:
    """The two points every candidate is read at, from the run's training prior."""
    tau = config.logit_adjustment  # a logit-adjusted run has tau x log(prior) removed already
    points = {
        "dataset": OperatingPoint(0.0 - tau),  # +0.0 when tau is 0
        "balanced": OperatingPoint(balanced_strength - tau),
    }
    return DecisionRule(tuple(training_prior(config).tolist()), points, "dataset")


def card_of(model: nn.Module, config: dict, classes: list[str], rule: DecisionRule) -> ModelCard:
    return network_card(
        model, classes=classes, preprocessing=config["preprocessing"], decision=rule
    )


def evaluate(args: argparse.Namespace, detector: str | Detector) -> dict:
    """Every candidate's suite scores, ranked best first."""
    found = candidates(args.run_dir, args.every)
    suite = rule = reference = None
    rows = []
    for candidate in found:
        started = time.perf_counter()
        model, config, classes, origin = load_candidate(candidate)
        if rule is None:
            rule = selection_rule(from_dict(TrainConfig, config), args.balanced_strength)
        card = card_of(model, config, classes, rule)
        if reference is None:
            reference = (card.classes, card.preprocessing)
        elif reference != (card.classes, card.preprocessing):
            raise SystemExit(f"{candidate.path}: other classes or preprocessing than the first")
        base = getattr(model, "base", model)
        loaded = LoadedModel(TorchBackend(base, card.preprocessing), card)
        recognizer = ExpressionRecognizer(
            loaded, detect=suite is None, detector=detector, batch_size=args.batch_size
        )
        if suite is None:  # the faces, read once for all candidates
            suite = generalization.read_suite(recognizer, args.datasets, args.centre_crop)
        readings = generalization.read_all(recognizer, suite)
        sources, scores = score_readings(
            readings, rule, classes, args.min_support, generalization.SUITE
        )
        groups = suite_groups(readings, args.min_support, generalization.SUITE)
        log_prior = np.log(np.asarray(rule.training_prior))
        fitted = max(score_strengths_by_group(groups, log_prior), key=lambda t: t[2])
        rows.append(
            {
                "candidate": candidate.name,
                "path": str(candidate.path),
                **origin,
                "suite": scores,
                "fitted": {"prior_strength": fitted[0], "suite_score": fitted[2]},
                "balanced_accuracy": {
                    key: {p: sources[key]["points"][p]["balanced_accuracy"] for p in scores}
                    for key in generalization.SUITE
                },
                "seconds": round(time.perf_counter() - started, 1),
            }
        )
        print(f"{candidate.name}: {line(rows[-1])}", flush=True)
    rows.sort(key=lambda row: -rank_score(row, args.rank_by))
    return {
        "run": str(args.run_dir),
        "rank_by": args.rank_by,
        "operating_points": {p: rule.point(p).prior_strength for p in ("dataset", "balanced")},
        "training_prior": list(rule.training_prior),
        "detector": suite.detector,
        "min_support": args.min_support,
        "candidates": rows,
        "command": "python tools/select_on_suite.py " + " ".join(args.argv),
        "date": datetime.date.today().isoformat(),
        "machine": generalization.machine(),
    }


def rank_score(row: dict, rank_by: str) -> float:
    return row["fitted"]["suite_score"] if rank_by == "fitted" else row["suite"][rank_by]


def line(row: dict) -> str:
    suite, fitted = row["suite"], row["fitted"]
    points = (
        f"suite {100 * suite['dataset']:.2f} (dataset), {100 * suite['balanced']:.2f} (balanced)"
    )
    best = f"fitted {100 * fitted['suite_score']:.2f} at {fitted['prior_strength']:+.2f}"
    return f"{points}, {best}; {row['seconds']} s"


def markdown(result: dict) -> str:
    """The ranked table: suite scores at both points, the fitted one, per-source balanced."""
    points = result["operating_points"]
    keys = list(result["candidates"][0]["balanced_accuracy"]) if result["candidates"] else []
    lines = [
        f"Candidates of `{result['run']}` on the generalization suite, ranked by "
        f"`{result['rank_by']}` ({len(result['candidates'])} compared; points: dataset strength "
        f"{points['dataset']:+.2f}, balanced {points['balanced']:+.2f} x log training prior; "
        f"detector {result['detector']}; %). Per source: balanced accuracy, dataset / balanced.",
        "",
        "| rank | candidate | step | suite dataset | suite balanced | fitted (strength) | "
        + " | ".join(keys)
        + " |",
        "|---|---|---|---|---|---|" + "---|" * len(keys),
    ]
    for rank, row in enumerate(result["candidates"], start=1):
        per_source = " | ".join(
            f"{100 * row['balanced_accuracy'][k]['dataset']:.1f} / "
            f"{100 * row['balanced_accuracy'][k]['balanced']:.1f}"
            for k in keys
        )
        fitted = row["fitted"]
        lines.append(
            f"| {rank} | {row['candidate']} | {row.get('step', '')} | "
            f"{100 * row['suite']['dataset']:.2f} | {100 * row['suite']['balanced']:.2f} | "
            f"{100 * fitted['suite_score']:.2f} ({fitted['prior_strength']:+.2f}) | {per_source} |"
        )
    lines += ["", f"Command: `{result['command']}`; {result['date']}; {result['machine']}."]
    return "\n".join(lines) + "\n"


def export(result: dict, out: Path) -> Path:
    """The winner as a weights file: the whole training graph, its run's config, the selection
    in the provenance, and the two points it was read at (until calibrate fits them)."""
    winner = result["candidates"][0]
    source = Path(winner["path"])
    for written in weights_paths(out):
        check_not_an_input(written, [source])
    model, config, classes, origin = load_candidate(Candidate(winner["candidate"], source))
    rule = DecisionRule(
        tuple(result["training_prior"]),
        {p: OperatingPoint(s) for p, s in result["operating_points"].items()},
    )
    provenance = {
        "config": config,
        **origin,
        "selected": {
            "from": winner["path"],
            "on": "the generalization suite's dev splits (tools/select_on_suite.py)",
            "rank_by": result["rank_by"],
            "candidates_compared": len(result["candidates"]),
            "suite": winner["suite"],
            "command": result["command"],
        },
    }
    card = card_of(model, config, classes, rule).replace(provenance=provenance)
    return save_weights(model, out, card)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--datasets", type=Path, default=generalization.SHARED_DATASETS)
    parser.add_argument(
        "--every", type=int, metavar="STEPS", help="only kept checkpoints at multiples of STEPS"
    )
    parser.add_argument("--rank-by", default="fitted", choices=["fitted", "balanced", "dataset"])
    parser.add_argument("--balanced-strength", type=float, default=1.0, metavar="STRENGTH")
    parser.add_argument("--centre-crop", type=float, default=generalization.CENTRE_CROP)
    parser.add_argument("--min-support", type=int, default=20, metavar="FACES")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--threads", type=int, default=1, help="torch and OpenCV threads")
    parser.add_argument("--export", type=Path, metavar="OUT.safetensors", help="the winner")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results")
    args = parser.parse_args(argv)
    if args.every is not None and args.every < 1:
        parser.error("--every must be a positive number of steps")
    args.argv = sys.argv[1:] if argv is None else list(argv)
    return args


def main(argv: list[str] | None = None, detector: str | Detector = "auto") -> dict:
    """Rank the run's candidates; `detector` replaces the default one (tests pass a stub)."""
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    cv2.setNumThreads(args.threads)
    result = evaluate(args, detector)
    stem = f"selection-{args.run_dir.resolve().name}"
    table = markdown(result)
    write_report(args.out, stem, result, table)
    print(table)
    if args.export:
        print(f"wrote {export(result, args.export)} ({result['candidates'][0]['candidate']})")
    return result


if __name__ == "__main__":
    try:
        main()
    except QcsferError as exc:  # a message, not a traceback
        raise SystemExit(f"{Path(__file__).name}: error: {exc}") from None
