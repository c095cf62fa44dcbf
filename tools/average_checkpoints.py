"""Average the weights of checkpoints from one run, re-measure BatchNorm, compare on validation.

    python tools/average_checkpoints.py OUT.pt CHECKPOINT [CHECKPOINT ...]

Writes OUT.pt, a weights-only checkpoint (not resumable) that `tools/ship_model.py RUN_DIR
--checkpoint OUT.pt` ships, and prints the validation accuracy (single view and flip-averaged,
fp32, and the operating points calibration would fit) of every input and of their average, so
that the window to average is chosen on the validation split, never on test.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from qcsfer.data.prior import training_prior
from qcsfer.data.splits import load_splits
from qcsfer.engine.averaging import average_states, recompute_batchnorm, validation_summary
from qcsfer.engine.checkpoint import (
    load_checkpoint,
    model_from_checkpoint,
    run_config,
    save_checkpoint,
    weights_only,
)
from qcsfer.errors import QcsferError
from qcsfer.outputs import check_not_an_input


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("checkpoints", type=Path, nargs="+")
    args = parser.parse_args()

    check_not_an_input(args.out, args.checkpoints)  # OUT.pt among the inputs: refused
    checkpoints = [load_checkpoint(path) for path in args.checkpoints]
    last = checkpoints[-1]
    if any(c["config"] != last["config"] or c["classes"] != last["classes"] for c in checkpoints):
        raise SystemExit("the checkpoints come from different runs (their configs differ)")
    config = run_config(last)
    model = model_from_checkpoint(last)
    train_split, val_split, _ = load_splits(config, None)
    log_prior = np.log(training_prior(config))

    def report(name: str) -> None:
        print(
            f"{name}: {validation_summary(model.base, val_split, config.preprocessing, log_prior)}"
        )

    for path, checkpoint in zip(args.checkpoints, checkpoints, strict=True):
        model.load_state_dict(checkpoint["model"])
        report(f"{path} (step {checkpoint['step']})")
    model.load_state_dict(average_states([c["model"] for c in checkpoints]))
    layers = recompute_batchnorm(
        model.base, train_split.images, config.preprocessing, config.augmentation, seed=config.seed
    )
    report(f"average of {len(checkpoints)} ({layers} BatchNorm layers re-measured)")
    averaged = weights_only(last, model.state_dict())
    averaged["averaged_from"] = [
        {"file": str(path), "step": c["step"]}
        for path, c in zip(args.checkpoints, checkpoints, strict=True)
    ]
    save_checkpoint(averaged, args.out)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    try:
        main()
    except QcsferError as exc:  # a message, not a traceback
        raise SystemExit(f"{Path(__file__).name}: error: {exc}") from None
