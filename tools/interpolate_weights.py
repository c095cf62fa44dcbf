"""Interpolate between a model and its fine-tuned version; compare the mixes on validation.

    python tools/interpolate_weights.py OUT.pt --start WEIGHTS --end CHECKPOINT \
        [--alphas 0,0.25,0.5,0.75,1] --write 0.5

Weight-space ensembling (WiSE-FT, Wortsman et al. 2022): (1 - alpha) x start + alpha x end,
every floating tensor including BatchNorm statistics. A fine-tune that buys robustness often
costs some clean accuracy; a mix of the two often keeps most of both. `--start` is a qcsfer
weights file holding the whole training graph (the model the fine-tune started from, its
`init.weights`), `--end` a checkpoint of the fine-tuned run. Prints the validation accuracy
(single view and flip-averaged, fp32) of every alpha and writes the `--write` mix as a
weights-only checkpoint that `tools/ship_model.py RUN_DIR --checkpoint OUT.pt` ships.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch

from qcsfer.config import TrainConfig, from_dict
from qcsfer.engine.averaging import average_states
from qcsfer.engine.evaluate import predict_logits
from qcsfer.engine.trainer import load_checkpoint, load_splits, save_atomic
from qcsfer.models import QCSModel
from qcsfer.models.weights import load_weights

RESUME_ONLY = ("optimizer", "scheduler", "scaler", "epoch_loss")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--start", type=Path, required=True, help="weights file (training graph)")
    parser.add_argument("--end", type=Path, required=True, help="fine-tuned run's checkpoint")
    parser.add_argument("--alphas", default="0,0.25,0.5,0.75,1")
    parser.add_argument("--write", type=float, required=True, help="the alpha to write")
    args = parser.parse_args()

    end = load_checkpoint(args.end)
    config = from_dict(TrainConfig, end["config"])
    start, card = load_weights(args.start)
    if card.network != "training" or card.mode != config.mode:
        raise SystemExit(f"{args.start}: not a {config.mode} training graph")
    start_state = start.state_dict()
    model = QCSModel(config.model_config(len(end["classes"])), config.mode)
    _, val_split, _ = load_splits(config, None)

    def mix(alpha: float) -> dict[str, torch.Tensor]:
        return average_states([start_state, end["model"]], [1 - alpha, alpha])

    for alpha in sorted({*map(float, args.alphas.split(",")), args.write}):
        model.load_state_dict(mix(alpha))
        accuracies = []
        for flip in (False, True):
            logits = predict_logits(
                model.base,
                val_split.images.images,
                config.preprocessing,
                torch.device("cpu"),
                flip=flip,
            )
            accuracies.append(np.mean(logits.argmax(1).numpy() == val_split.records.labels))
        print(
            f"alpha {alpha:.2f}: Valid {100 * accuracies[0]:.2f}% single, "
            f"{100 * accuracies[1]:.2f}% flip"
        )
    mixed = {k: v for k, v in end.items() if k not in RESUME_ONLY}
    mixed["model"] = mix(args.write)
    mixed["interpolated"] = {"start": str(args.start), "end": str(args.end), "alpha": args.write}
    save_atomic(mixed, args.out)
    print(f"wrote {args.out} (alpha {args.write})")


if __name__ == "__main__":
    main()
