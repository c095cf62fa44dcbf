"""Package a run's best model as the default model inside qcsfer (src/qcsfer/weights/).

    python tools/ship_model.py runs/ferplus-qcs-small [--name ferplus-qcs-small | --out FILE]
        [--checkpoint FILE] [--data-root DIR] [--trained-on TEXT]

Ships the whole training graph (inference uses its base network; `qcsfer explain --reference`
its CSA modules) from the run's best.pt, or from --checkpoint: a weight average of the run's
checkpoints written by tools/average_checkpoints.py. The validation numbers in its card's
metrics (valid_flip, valid) are measured on the shipped file itself, with and without flip
averaging, and the commit it was shipped from is recorded. A run that started from another
qcsfer weights file (`init.weights`, a second stage) carries that file's provenance along as
`previous_stage`.
A run trained on another machine names where the validation data lives here (--data-root) and
the hardware it trained on (--trained-on, recorded in the provenance). A run trained with logit
adjustment ships with its `dataset` operating point putting the prior back (-tau) until
tools/calibrate.py fits both points on Valid. Paths in the provenance (the command, the data
root, the runs and checkpoints it came from) are written relative to the repository, never as
the absolute paths of the machine it was shipped on.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import tempfile
from pathlib import Path
from typing import Any

from qcsfer.card import read_card, weights_paths
from qcsfer.config import TrainConfig, from_dict
from qcsfer.data.prior import training_prior
from qcsfer.decision import DecisionRule, OperatingPoint
from qcsfer.engine.checkpoint import load_checkpoint, model_from_checkpoint
from qcsfer.engine.epoch_record import best_epoch, read_history
from qcsfer.engine.evaluate import evaluate
from qcsfer.errors import QcsferError
from qcsfer.models.weights import network_card, save_weights
from qcsfer.outputs import check_not_an_input
from qcsfer.pretrained import DEFAULT_WEIGHTS, WEIGHTS_DIR

REPO = Path(__file__).resolve().parents[1]


def measure(weights: Path, data: dict) -> dict:
    options = data["options"] if data.get("val_options") is None else data["val_options"]
    measured = {}
    for flip in (False, True):
        metrics = evaluate(
            weights,
            data["format"],
            data["root"],
            data["val_split"],
            options=options,
            flip=flip,
            device="cpu",
        ).metrics
        measured["flip" if flip else "plain"] = {
            "accuracy": metrics.accuracy,
            "balanced_accuracy": metrics.balanced_accuracy,
            "macro_f1": metrics.macro_f1,
            "images": metrics.total,
        }
    return measured


def prior_put_back(config: TrainConfig) -> DecisionRule | None:
    """A logit-adjusted run's logits have the training prior removed: until tools/calibrate.py
    fits the rule, its `dataset` point adds tau x log(prior) back, as validation did."""
    if not config.logit_adjustment:
        return None
    prior = tuple(training_prior(config).tolist())
    return DecisionRule(prior, {"dataset": OperatingPoint(-config.logit_adjustment)})


def portable(path: str | Path) -> str:
    """A path as provenance records it: relative to the repository (`../runs/NAME`,
    `src/qcsfer/weights/FILE`), never the absolute path of the machine it was shipped on."""
    try:
        return os.path.relpath(os.path.abspath(path), REPO)
    except ValueError:  # on another drive (Windows): its name is all that travels
        return Path(path).name


def portable_paths(value: Any) -> Any:
    """Provenance data with every absolute path in it made `portable` (recursively)."""
    if isinstance(value, dict):
        return {key: portable_paths(item) for key, item in value.items()}
    if isinstance(value, list):
        return [portable_paths(item) for item in value]
    if isinstance(value, str) and os.path.isabs(value):
        return portable(value)
    return value


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--name", default=DEFAULT_WEIGHTS)
    parser.add_argument("--out", type=Path, help="write here instead of the package's weights")
    parser.add_argument("--checkpoint", type=Path, help="instead of RUN_DIR/best.pt")
    parser.add_argument("--data-root", help="the dataset's root here, if not the run's")
    parser.add_argument("--trained-on", help="the hardware the run trained on, for provenance")
    args = parser.parse_args()

    source = args.checkpoint or args.run_dir / "best.pt"
    destination = args.out or WEIGHTS_DIR / f"{args.name}.safetensors"
    for written in weights_paths(destination):  # the tensors and the card beside them
        check_not_an_input(written, [source])
    checkpoint = load_checkpoint(source)
    config, classes = checkpoint["config"], checkpoint["classes"]
    if args.data_root:
        config["data"]["root"] = args.data_root
    model = model_from_checkpoint(checkpoint)
    history = read_history(args.run_dir)
    best = best_epoch(history)
    decision = prior_put_back(from_dict(TrainConfig, config))

    card = network_card(
        model, classes=classes, preprocessing=config["preprocessing"], decision=decision
    )
    with tempfile.TemporaryDirectory() as tmp:
        measured = measure(
            save_weights(model, Path(tmp) / "model.safetensors", card), config["data"]
        )
    commit = subprocess.run(
        ["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True, check=True
    ).stdout.strip()
    data = config["data"]
    provenance = {
        "dataset": f"{data['format']}: trained on '{data['train_split']}' {data['options']}, "
        f"selected on '{data['val_split']}' {data.get('val_options') or data['options']} "
        "(never on test)",
        "seed": config["seed"],
        "epochs": config["epochs"],
        "best_epoch": best.epoch,
        "train_minutes": round(sum(h.epoch_seconds for h in history) / 60, 1),
        "commit": commit,
        "command": f"qcsfer train <recipe>; python tools/ship_model.py {portable(args.run_dir)}",
        "config": config,
    }
    if args.trained_on:
        provenance["trained_on"] = args.trained_on
    if args.checkpoint:
        provenance["command"] += f" --checkpoint {portable(args.checkpoint)}"
    if "averaged_from" in checkpoint:
        provenance["best_epoch"] = None  # not one epoch's weights
        provenance["averaged_from"] = checkpoint["averaged_from"]
    if "interpolated" in checkpoint:  # WiSE-FT: the start weights mixed with the fine-tune(s)
        mix = checkpoint["interpolated"]
        ends = [Path(end) for end in ([mix["end"]] if isinstance(mix["end"], str) else mix["end"])]
        provenance["best_epoch"] = None
        provenance["interpolated"] = mix
        histories = [read_history(end.parent) for end in ends]  # each end in its run dir
        provenance["epochs"] = [len(h) for h in histories]
        provenance["train_minutes"] = round(
            sum(epoch.epoch_seconds for h in histories for epoch in h) / 60, 1
        )
    if config["init"].get("weights"):
        previous = read_card(config["init"]["weights"]).provenance
        provenance["previous_stage"] = previous
        provenance["train_minutes_all_stages"] = round(
            provenance["train_minutes"]
            + previous.get("train_minutes_all_stages", previous["train_minutes"]),
            1,
        )
    views = {"flip": "valid_flip", "plain": "valid"}  # what `measure` read, flip first
    metrics = {name: measured[view] for view, name in views.items() if view in measured}
    card = card.replace(metrics=metrics, provenance=portable_paths(provenance))
    out = save_weights(model, destination, card)
    print(f"wrote {out} ({out.stat().st_size / 1e6:.1f} MB)")
    print(json.dumps(measured, indent=2))


if __name__ == "__main__":
    try:
        main()
    except QcsferError as exc:  # a message, not a traceback
        raise SystemExit(f"{Path(__file__).name}: error: {exc}") from None
