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
`balanced`, the best balanced accuracy keeping 85% accuracy), and writes the `--write` mix
as a weights-only checkpoint that `tools/ship_model.py RUN_DIR --checkpoint OUT.pt` ships.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch

from qcsfer.card import weights_paths
from qcsfer.data.prior import training_prior
from qcsfer.data.splits import load_splits
from qcsfer.engine.averaging import average_states, validation_summary
from qcsfer.engine.checkpoint import (
    load_checkpoint,
    model_from_checkpoint,
    run_config,
    save_checkpoint,
    weights_only,
)
from qcsfer.errors import QcsferError
from qcsfer.models.weights import load_weights
from qcsfer.outputs import check_not_an_input


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--start", type=Path, required=True, help="weights file (training graph)")
    parser.add_argument(
        "--end", type=Path, nargs="+", required=True, help="fine-tuned runs' checkpoints"
    )
    parser.add_argument("--alphas", default="0,0.25,0.5,0.75,1")
    parser.add_argument("--write", type=float, required=True, help="the alpha to write")
    args = parser.parse_args()

    check_not_an_input(args.out, [*weights_paths(args.start), *args.end])
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
    log_prior = np.log(training_prior(config))

    def mix(alpha: float) -> dict[str, torch.Tensor]:
        return average_states([start_state, soup], [1 - alpha, alpha])

    for alpha in sorted({*map(float, args.alphas.split(",")), args.write}):
        model.load_state_dict(mix(alpha))
        summary = validation_summary(model.base, val_split, config.preprocessing, log_prior)
        print(f"alpha {alpha:.2f}: {summary}")
    mixed = weights_only(end, mix(args.write))
    mixed["interpolated"] = {
        "start": str(args.start),
        "end": [str(path) for path in args.end],
        "alpha": args.write,
    }
    save_checkpoint(mixed, args.out)
    print(f"wrote {args.out} (alpha {args.write})")


if __name__ == "__main__":
    try:
        main()
    except QcsferError as exc:  # a message, not a traceback
        raise SystemExit(f"{Path(__file__).name}: error: {exc}") from None
