"""Fit a model's decision rule on a validation split and store it in the model's metadata.

    python tools/calibrate.py WEIGHTS --data ferplus:../shared/datasets/ferplus --split valid \
        --option label_mode=majority --flip [--min-accuracy 0.85] [--default balanced]

The training prior is computed from the training data the model's own recorded configuration
names (`qcsfer.data.prior.training_prior`: every source with its sampling weight, soft labels
where there are any). Then `qcsfer.engine.calibration.fit_decision_rule` chooses each operating
point's prior strength (`dataset`: best accuracy; `balanced`: best balanced accuracy with
accuracy >= --min-accuracy) and one temperature per operating point, and the JSON sidecar is
rewritten with `decision` (the tensors are untouched, so their recorded sha256 still holds) and
what was measured (`provenance.calibration`); the card's metrics for the split (single view and
flip) are measured again at the `dataset` point, what `qcsfer evaluate` reports by default
(`provenance.validation` keeps the logits as trained).
Calibrate on the validation split, never on test.

    python tools/calibrate.py WEIGHTS --suite [--datasets ../shared/datasets] [--default balanced]

fits a multi-source model on the four dev splits of the generalization suite at once
(benchmarks/generalization.py reads them: FERPlus Valid flip, the affectnet-web dev carve, tcce
dev through the default face detector, lfw-imfdb dev), with no accuracy floor: `balanced` is the
strength with the best suite score (mean balanced accuracy of the four), `dataset` the one with
the best mean accuracy of the four (0 unless another gains 0.1 point: the logits as trained,
which learned the training mix, stay the reference; a soft-label model that under-weights its
prior still gets it), temperatures on the pooled logits
(`qcsfer.engine.calibration.fit_decision_rule_on_groups`). The provenance records the sources,
their faces and both points' per-source scores; the card's metrics get the suite scores and
FERPlus Valid at the `dataset` point.
"""

from __future__ import annotations

import argparse
import os
import sys
from dataclasses import asdict
from pathlib import Path

import numpy as np

from qcsfer.card import write_card
from qcsfer.config import TrainConfig, from_dict
from qcsfer.data.datasets import parse_spec
from qcsfer.data.prior import training_prior
from qcsfer.engine.calibration import PointReport, fit_decision_rule, fit_decision_rule_on_groups
from qcsfer.engine.evaluate import split_logits
from qcsfer.engine.metrics import compute_metrics
from qcsfer.errors import QcsferError
from qcsfer.inference.faces import Detector
from qcsfer.inference.recognizer import ExpressionRecognizer
from qcsfer.pretrained import resolve_weights

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))
import generalization  # noqa: E402 (the suite's reader, shared with benchmarks/)
from suite_scores import suite_groups  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("weights", help="weights file, run directory or 'default'")
    parser.add_argument("--data", help="FORMAT:ROOT of the validation data")
    parser.add_argument("--split", default="valid")
    parser.add_argument("--option", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--flip", action="store_true", help="fit on flip-averaged logits")
    parser.add_argument("--min-accuracy", type=float, default=0.85)
    parser.add_argument("--default", default="balanced", choices=["dataset", "balanced"])
    parser.add_argument("--data-root", help="where the training data lives here, if elsewhere")
    parser.add_argument("--suite", action="store_true", help="fit on the suite's four dev splits")
    parser.add_argument("--datasets", type=Path, default=generalization.SHARED_DATASETS)
    parser.add_argument("--min-support", type=int, default=20, metavar="FACES")
    args = parser.parse_args(argv)
    if args.suite == bool(args.data):
        parser.error("give --data (one validation split) or --suite (the suite's dev splits)")
    args.argv = sys.argv[1:] if argv is None else list(argv)
    return args


def main(argv: list[str] | None = None, detector: str | Detector = "auto") -> None:
    """`detector` replaces the suite's face detector (tests pass a stub)."""
    args = parse_args(argv)
    path = resolve_weights(args.weights)
    if args.suite:
        fit_on_suite(args, path, detector)
    else:
        fit_on_split(args, path)


def config_prior(provenance: dict, data_root: str | None) -> np.ndarray:
    """The training prior of the run a card's recorded configuration describes."""
    config = from_dict(TrainConfig, provenance["config"])
    if data_root:
        config.data.root = data_root
    return training_prior(config)


def report(prior: np.ndarray, classes: tuple[str, ...], reports: dict[str, PointReport]) -> None:
    print(f"training prior: {dict(zip(classes, np.round(prior, 4).tolist(), strict=True))}")
    for r in reports.values():
        print(
            f"prior={r.prior:<8} strength {r.prior_strength:.2f} temperature {r.temperature:.3f}: "
            f"accuracy {r.accuracy:.4f}, balanced {r.balanced_accuracy:.4f}, macro F1 "
            f"{r.macro_f1:.4f}, ECE {r.ece_before:.4f} -> {r.ece_after:.4f}"
        )


def fit_on_split(args: argparse.Namespace, path: Path) -> None:
    data_format, root = parse_spec(args.data)
    options = dict(item.split("=", 1) for item in args.option)
    result = split_logits(path, data_format, root, args.split, options=options, flip=args.flip)
    prior = config_prior(result.card.provenance, args.data_root)
    rule, reports = fit_decision_rule(
        result.logits,
        result.labels,
        result.classes,
        prior,
        min_accuracy=args.min_accuracy,
        default=args.default,
    )
    provenance = {
        **result.card.provenance,
        "calibration": {
            "data": args.data,
            "split": args.split,
            "options": options,
            "flip": args.flip,
            "min_accuracy": args.min_accuracy,
            "images": len(result.labels),
            "operating_points": {name: asdict(r) for name, r in reports.items()},
        },
    }
    metrics = dict(result.card.metrics)
    for flip in (False, True):  # what `qcsfer evaluate` reports by default: the dataset point
        view = (
            result
            if flip == args.flip
            else split_logits(path, data_format, root, args.split, options=options, flip=flip)
        )
        measured = compute_metrics(
            view.labels, rule.adjust(view.logits, "dataset").argmax(1), view.classes
        )
        metrics[f"{args.split}_flip" if flip else args.split] = {
            "accuracy": measured.accuracy,
            "balanced_accuracy": measured.balanced_accuracy,
            "macro_f1": measured.macro_f1,
            "images": measured.total,
        }
    card = result.card.replace(decision=rule, provenance=provenance, metrics=metrics)
    json_path = write_card(card, path)
    report(prior, result.classes, reports)
    print(f"wrote the decision rule (default prior: {args.default}) into {json_path}")


def fit_on_suite(args: argparse.Namespace, path: Path, detector: str | Detector) -> None:
    """Both points fitted on the suite's four dev splits (read as the suite reads them)."""
    recognizer = ExpressionRecognizer(path, detector=detector)
    suite = generalization.read_suite(recognizer, args.datasets, generalization.CENTRE_CROP)
    readings = generalization.read_all(recognizer, suite)
    groups = suite_groups(readings, args.min_support, generalization.SUITE)
    card, classes = recognizer.card, tuple(recognizer.classes)
    prior = config_prior(card.provenance, args.data_root)
    rule, reports, per_group = fit_decision_rule_on_groups(groups, classes, prior, args.default)
    points, metrics = {}, dict(card.metrics)
    for name, r in reports.items():
        scores = per_group[name]
        suite_score = float(np.mean([b for _, b in scores.values()]))
        mean_accuracy = float(np.mean([a for a, _ in scores.values()]))
        points[name] = {
            "prior_strength": r.prior_strength,
            "temperature": r.temperature,
            "suite_score": suite_score,
            "mean_accuracy": mean_accuracy,
            "per_source": {
                k: {"accuracy": a, "balanced_accuracy": b} for k, (a, b) in scores.items()
            },
            "pooled": {
                k: v
                for k, v in asdict(r).items()
                if k not in ("prior", "prior_strength", "temperature")
            },
        }
        metrics[f"suite_{name}"] = {
            "suite_score": suite_score,
            "mean_accuracy": mean_accuracy,
            **{f"{k} balanced_accuracy": b for k, (_, b) in scores.items()},
        }
    fer = next(s for s in suite.sources if s.key == "ferplus-valid")
    flip = next(r for r in readings if r.key == "ferplus-valid").logits
    for view, logits in (("valid", recognizer.logits(fer.inputs)), ("valid_flip", flip)):
        measured = compute_metrics(fer.labels, rule.adjust(logits, "dataset").argmax(1), classes)
        metrics[view] = {  # what `qcsfer evaluate` reports by default: the dataset point
            "accuracy": measured.accuracy,
            "balanced_accuracy": measured.balanced_accuracy,
            "macro_f1": measured.macro_f1,
            "images": measured.total,
        }
    pooled = sum(int(g.found.sum()) for g in groups)
    calibration = {
        "fitted_on": "the generalization suite's dev splits (benchmarks/generalization.py)",
        "datasets": os.path.relpath(args.datasets.resolve(), REPO),
        "detector": suite.detector,
        "min_support": args.min_support,
        "sources": {
            g.name: {
                "images": len(g.labels),
                "faces_found": int(g.found.sum()),
                "balanced_over": [classes[c] for c in g.counted],
            }
            for g in groups
        },
        "rule": "dataset: best mean accuracy of the sources (0 unless another strength gains "
        "0.1 point); balanced: best suite score (mean balanced accuracy), never more prior than "
        "dataset; no accuracy floor",
        "temperature_fitted_on": f"the pooled logits of the {pooled} faces found",
        "operating_points": points,
        "command": "python tools/calibrate.py " + " ".join(args.argv),
    }
    provenance = {**card.provenance, "calibration": calibration}
    json_path = write_card(
        card.replace(decision=rule, provenance=provenance, metrics=metrics), path
    )
    report(prior, classes, reports)
    for name, point in points.items():
        per_source = ", ".join(
            f"{k} {100 * v['balanced_accuracy']:.1f}" for k, v in point["per_source"].items()
        )
        print(
            f"{name} (strength {point['prior_strength']:+.2f}): suite score "
            f"{100 * point['suite_score']:.2f}, mean accuracy {100 * point['mean_accuracy']:.2f} "
            f"(balanced per source: {per_source})"
        )
    print(f"wrote the decision rule (default prior: {args.default}) into {json_path}")


if __name__ == "__main__":
    try:
        main()
    except QcsferError as exc:  # a message, not a traceback
        raise SystemExit(f"{Path(__file__).name}: error: {exc}") from None
