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
"""

from __future__ import annotations

import argparse
from dataclasses import asdict

import numpy as np

from qcsfer.card import write_card
from qcsfer.config import TrainConfig, from_dict
from qcsfer.data.datasets import parse_spec
from qcsfer.data.prior import training_prior
from qcsfer.engine.calibration import fit_decision_rule
from qcsfer.engine.evaluate import split_logits
from qcsfer.engine.metrics import compute_metrics
from qcsfer.pretrained import resolve_weights


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("weights", help="weights file, run directory or 'default'")
    parser.add_argument("--data", required=True, help="FORMAT:ROOT of the validation data")
    parser.add_argument("--split", default="valid")
    parser.add_argument("--option", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--flip", action="store_true", help="fit on flip-averaged logits")
    parser.add_argument("--min-accuracy", type=float, default=0.85)
    parser.add_argument("--default", default="balanced", choices=["dataset", "balanced"])
    parser.add_argument("--data-root", help="where the training data lives here, if elsewhere")
    args = parser.parse_args()

    path = resolve_weights(args.weights)
    data_format, root = parse_spec(args.data)
    options = dict(item.split("=", 1) for item in args.option)
    result = split_logits(path, data_format, root, args.split, options=options, flip=args.flip)
    config = from_dict(TrainConfig, result.card.provenance["config"])
    if args.data_root:
        config.data.root = args.data_root
    prior = training_prior(config)
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
    print(f"training prior: {dict(zip(result.classes, np.round(prior, 4).tolist(), strict=True))}")
    for r in reports.values():
        print(
            f"prior={r.prior:<8} strength {r.prior_strength:.2f} temperature {r.temperature:.3f}: "
            f"accuracy {r.accuracy:.4f}, balanced {r.balanced_accuracy:.4f}, macro F1 "
            f"{r.macro_f1:.4f}, ECE {r.ece_before:.4f} -> {r.ece_after:.4f}"
        )
    print(f"wrote the decision rule (default prior: {args.default}) into {json_path}")


if __name__ == "__main__":
    main()
