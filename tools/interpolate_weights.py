"""Interpolate between a model and its fine-tuned version; compare the mixes on validation.

    python tools/interpolate_weights.py OUT.pt --start WEIGHTS --end CHECKPOINT [CHECKPOINT ...] \
        [--alphas 0,0.25,0.5,0.75,1] --write 0.5

Weight-space ensembling (WiSE-FT, Wortsman et al. 2022): (1 - alpha) x start + alpha x end,
every floating tensor including BatchNorm statistics. A fine-tune that buys robustness often
costs some clean accuracy; a mix of the two often keeps most of both. `--start` is a qcsfer
weights file holding the whole training graph (the model the fine-tune started from, its
`init.weights`), `--end` a checkpoint of the fine-tuned run, or of several fine-tunes of the
same start, averaged with equal weights first (a "model soup", Wortsman et al. 2022). Prints
the validation accuracy (single view and flip-averaged, fp32) of every alpha, and the two
operating points the decision rule would fit on those flip-averaged logits (tools/calibrate.py:
`dataset`, the best accuracy over prior strengths, which a mix with a logit-adjusted run needs;
`balanced`, the best balanced accuracy keeping --min-accuracy), and writes the `--write` mix
as a weights-only checkpoint that `tools/ship_model.py RUN_DIR --checkpoint OUT.pt` ships.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch

from qcsfer.data.prior import training_prior
from qcsfer.data.splits import load_splits
from qcsfer.engine.averaging import average_states, validation_logits
from qcsfer.engine.calibration import choose_strengths, score_strengths
from qcsfer.engine.checkpoint import (
    load_checkpoint,
    model_from_checkpoint,
    run_config,
    save_checkpoint,
    weights_only,
)
from qcsfer.errors import QcsferError
from qcsfer.models.weights import load_weights


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--start", type=Path, required=True, help="weights file (training graph)")
    parser.add_argument(
        "--end", type=Path, nargs="+", required=True, help="fine-tuned runs' checkpoints"
    )
    parser.add_argument("--alphas", default="0,0.25,0.5,0.75,1")
    parser.add_argument("--write", type=float, required=True, help="the alpha to write")
    parser.add_argument("--min-accuracy", type=float, default=0.85, help="balanced point floor")
    args = parser.parse_args()

    ends = [load_checkpoint(path) for path in args.end]
    end = ends[0]
    config = run_config(end)
    for path, other in zip(args.end[1:], ends[1:], strict=True):
        if run_config(other).mode != config.mode:
            raise SystemExit(f"{path}: not a fine-tune of the same model as {args.end[0]}")
    soup = average_states([e["model"] for e in ends], [1 / len(ends)] * len(ends))
    start, card = load_weights(args.start)
    if card.network != "training" or card.mode != config.mode:
        raise SystemExit(f"{args.start}: not a {config.mode} training graph")
    start_state = start.state_dict()
    model = model_from_checkpoint(end)
    _, val_split, _ = load_splits(config, None)
    labels, classes = val_split.records.labels, val_split.records.classes
    log_prior = np.log(training_prior(config))

    def mix(alpha: float) -> dict[str, torch.Tensor]:
        return average_states([start_state, soup], [1 - alpha, alpha])

    for alpha in sorted({*map(float, args.alphas.split(",")), args.write}):
        model.load_state_dict(mix(alpha))
        single, flip = validation_logits(model.base, val_split.images, config.preprocessing)
        print(
            f"alpha {alpha:.2f}: Valid {_percent(single, labels)} single view, "
            f"{_percent(flip, labels)} flip; "
            + _points(flip.numpy(), labels, classes, log_prior, args.min_accuracy)
        )
    mixed = weights_only(end, mix(args.write))
    mixed["interpolated"] = {
        "start": str(args.start),
        "end": [str(path) for path in args.end],
        "alpha": args.write,
    }
    save_checkpoint(mixed, args.out)
    print(f"wrote {args.out} (alpha {args.write})")


def _percent(logits: torch.Tensor, labels: np.ndarray) -> str:
    return f"{100 * (logits.argmax(1).numpy() == labels).mean():.2f}%"


def _points(
    logits: np.ndarray,
    labels: np.ndarray,
    classes: tuple[str, ...],
    log_prior: np.ndarray,
    min_accuracy: float,
) -> str:
    """The operating points calibration would fit on these logits, in one line."""
    scored = score_strengths(logits, labels, log_prior, classes)
    measured = {s: (accuracy, balanced) for s, accuracy, balanced in scored}
    points = []
    for name, s in choose_strengths(scored, min_accuracy).items():
        accuracy, balanced = measured[s]
        points.append(f"{name} (strength {s:+.2f}) {100 * accuracy:.2f}% / {100 * balanced:.2f}%")
    return "; ".join(points) + " (accuracy / balanced)"


if __name__ == "__main__":
    try:
        main()
    except QcsferError as exc:  # a message, not a traceback
        raise SystemExit(f"{Path(__file__).name}: error: {exc}") from None
