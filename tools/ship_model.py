"""Package a run's model as a shipped model inside qcsfer (src/qcsfer/weights/), or add its
generalization-suite results to a shipped model's card.

    python tools/ship_model.py RUN_DIR (--name general|ferplus | --out FILE) [--checkpoint FILE]
        [--half] [--suite generalization-X.json] [--data-root DIR] [--trained-on TEXT]
    python tools/ship_model.py (--name NAME | --out FILE) --suite generalization-X.json

Ships the whole training graph (inference uses its base network; `qcsfer explain --reference`
its CSA modules) from the run's best.pt, or from --checkpoint: a kept checkpoint chosen on the
generalization suite, or a weight average of the run's checkpoints written by
tools/average_checkpoints.py. `--half` stores the tensors as float16 (half the file; they are
read back as float32, and the metrics are measured on the file as stored). The validation
numbers in its card's metrics (valid_flip, valid) are measured on the shipped file itself, with
and without flip averaging, and the commit it was shipped from is recorded. A run that started
from another qcsfer weights file or run (`init.weights`, a second stage) carries that file's
provenance along as `previous_stage`. A multi-source run's card lists its `sources`: each
dataset, the part used and the licence note of the README beside its images; a run built on a
converted backbone (init.backbone, in this stage or an earlier one) records that file's card as
`backbone` (package, version, sha256, licence).
`--suite` adds the results of benchmarks/generalization.py (suite score at each operating point,
each source's balanced accuracy) to the card; it is refused unless it was measured at the card's
operating points, so the usual order is: ship, calibrate (tools/calibrate.py), run the suite on
the shipped model, add it with the second form (which rewrites only the card).
A run trained on another machine names where the validation data lives here (--data-root) and
the hardware it trained on (--trained-on, recorded in the provenance). A run trained with logit
adjustment ships with its `dataset` operating point putting the prior back (-tau) until
tools/calibrate.py fits both points. Paths in the provenance (the command, the data root, the
runs and checkpoints it came from) are written relative to the repository, never as the
absolute paths of the machine it was shipped on.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import torch

from qcsfer.card import ModelCard, read_card, weights_paths, write_card
from qcsfer.config import TrainConfig, from_dict
from qcsfer.data.prior import training_prior
from qcsfer.decision import DecisionRule, OperatingPoint
from qcsfer.engine.checkpoint import load_checkpoint, model_from_checkpoint
from qcsfer.engine.epoch_record import best_epoch, read_history
from qcsfer.engine.evaluate import evaluate
from qcsfer.errors import QcsferError, UsageError
from qcsfer.models.backbone_file import read_backbone_card
from qcsfer.models.weights import network_card, save_weights
from qcsfer.outputs import check_not_an_input
from qcsfer.pretrained import SHIPPED, resolve_weights, shipped

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


def training_sources(data: dict[str, Any]) -> list[dict[str, Any]]:
    """Each dataset the model trained on: its name, the part used and the licence note of the
    README beside its images (a source without one is recorded as such, never guessed)."""
    main = {
        "name": Path(data["root"]).name,
        "format": data["format"],
        "root": data["root"],
        "used": f"'{data['train_split']}' {data['options'] or ''}".rstrip()
        + f"; model selection on '{data['val_split']}'",
    }
    rows = [main]
    for source in data.get("sources") or []:
        used = [f"'{source.get('split', 'train')}'"]
        for key in ("include", "exclude", "class_map", "detector", "framing", "weight", "ratings"):
            if source.get(key) not in (None, [], {}):
                used.append(f"{key} {source[key]}")
        rows.append(
            {
                "name": source.get("name") or source["format"],
                "format": source["format"],
                "root": source["root"],
                "used": ", ".join(used),
            }
        )
    for row in rows:
        row["licence"] = licence_note(Path(row["root"]) / "README.md")
    return rows


def licence_note(readme: Path) -> str:
    """The README's `Licence:` item, else its sentences that speak of licences or research use."""
    try:
        text = readme.read_text(encoding="utf-8")
    except OSError:
        return f"unknown: no README at {portable(readme)}"
    items = re.split(r"\n\s*(?:[-*]\s+|\n)", text)  # list items and paragraphs, joined lines
    items = [" ".join(item.split()) for item in items]
    for item in items:
        if re.match(r"licen[cs]e\s*:", item, re.IGNORECASE):
            return item.split(":", 1)[1].strip()
    sentences = [s for item in items for s in re.split(r"(?<=[.;])\s+", item)]
    found = [s for s in sentences if re.search(r"licen[cs]|research use", s, re.IGNORECASE)]
    return " ".join(found) or f"unknown: {portable(readme)} states no licence"


def backbone_provenance(config: dict[str, Any], previous: dict[str, Any] | None) -> dict | None:
    """Where the pretrained backbone came from (its converted file's card: package, version,
    sha256 of the sources, licence), found in this run's `init.backbone` or an earlier stage's."""
    stages = [config]
    while previous is not None:
        stages.append(previous.get("config") or {})
        previous = previous.get("previous_stage")
    for stage in stages:
        path = (stage.get("init") or {}).get("backbone")
        if path:
            try:
                return {"file": path, **read_backbone_card(path)}
            except (QcsferError, OSError) as exc:
                return {"file": path, "card": f"not readable when shipped: {exc}"}
    return None


def suite_metrics(suite: dict[str, Any], card: ModelCard) -> dict[str, dict[str, float]]:
    """A generalization suite's results (benchmarks/generalization.py) as card metrics: per
    operating point, the suite score and each source's balanced accuracy. Refused when measured
    on other classes or at other prior strengths than this card's (calibrate, then run it)."""
    if list(suite["classes"]) != list(card.classes):
        raise UsageError(f"the suite read classes {suite['classes']}, the model has {card.classes}")
    for point, values in suite["operating_points"].items():
        ours = card.decision.point(point).prior_strength
        if abs(values["prior_strength"] - ours) > 1e-6:
            raise UsageError(
                f"the suite was measured at {point} prior strength {values['prior_strength']}, "
                f"this card's is {ours}: run benchmarks/generalization.py on the shipped model"
            )
    metrics = {}
    for point, score in suite["suite"].items():  # named as tools/calibrate.py --suite names them
        values = {"suite_score": score}
        for key, source in suite["sources"].items():
            if point in source["points"]:
                values[f"{key} balanced_accuracy"] = source["points"][point]["balanced_accuracy"]
        metrics[f"suite_{point}"] = {**card.metrics.get(f"suite_{point}", {}), **values}
    return metrics


def with_suite(card: ModelCard, suite_file: Path) -> ModelCard:
    """The card with the suite's metrics and where they come from (file, command, date)."""
    suite = json.loads(suite_file.read_text(encoding="utf-8"))
    record = {key: suite.get(key) for key in ("command", "date", "detector", "min_support")}
    record.update(file=portable(suite_file), sources=suite["suite_sources"], score=suite["suite"])
    provenance = {**card.provenance, "generalization_suite": record}
    metrics = {**card.metrics, **suite_metrics(suite, card)}
    return card.replace(metrics=metrics, provenance=provenance)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("run_dir", type=Path, nargs="?", help="omit to only add --suite")
    parser.add_argument("--name", choices=[m.name for m in SHIPPED], help="the shipped model")
    parser.add_argument("--out", type=Path, help="write here instead of the package's weights")
    parser.add_argument("--checkpoint", type=Path, help="instead of RUN_DIR/best.pt")
    parser.add_argument("--data-root", help="the dataset's root here, if not the run's")
    parser.add_argument("--trained-on", help="the hardware the run trained on, for provenance")
    parser.add_argument("--suite", type=Path, help="a generalization-*.json of this model")
    parser.add_argument(
        "--half", action="store_true", help="store float16 tensors (half the file; read as float32)"
    )
    args = parser.parse_args(argv)
    if (args.name is None) == (args.out is None):
        parser.error("give one of --name (a shipped model) or --out FILE")
    if args.run_dir is None and args.suite is None:
        parser.error("give RUN_DIR to ship a model, or --suite to add its results to the card")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    destination = args.out or shipped(args.name).path
    if args.run_dir is None:  # the card only: the tensors and the rest of the card stay
        card = with_suite(read_card(destination), args.suite)
        print(f"wrote {write_card(card, destination)}")
        return
    source = args.checkpoint or args.run_dir / "best.pt"
    for written in weights_paths(destination):  # the tensors and the card beside them
        check_not_an_input(written, [source])
    checkpoint = load_checkpoint(source)
    config, classes = checkpoint["config"], checkpoint["classes"]
    if args.data_root:
        config["data"]["root"] = args.data_root
    model = model_from_checkpoint(checkpoint)
    if args.half:  # measured below as stored: the file is what the numbers describe
        model = model.to(torch.float16)
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
    provenance: dict[str, Any] = {
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
        if args.checkpoint.resolve() != (args.run_dir / "best.pt").resolve():
            provenance["best_epoch"] = None  # a kept checkpoint, chosen by whoever shipped it
            provenance["checkpoint"] = {k: checkpoint.get(k) for k in ("epoch", "step")}
    if args.half:
        provenance["command"] += " --half"
        provenance["stored_as"] = "float16 (read back as float32; metrics measured so)"
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
    previous = None
    if config["init"].get("weights"):
        previous = previous_stage(config["init"]["weights"])
        provenance["previous_stage"] = previous
        before = previous.get("train_minutes_all_stages", previous.get("train_minutes"))
        if before is not None:
            provenance["train_minutes_all_stages"] = round(provenance["train_minutes"] + before, 1)
    if data.get("sources"):  # a multi-source model names every dataset and its terms
        provenance["sources"] = training_sources(data)
    backbone = backbone_provenance(config, previous)
    if backbone is not None:
        provenance["backbone"] = backbone
    views = {"flip": "valid_flip", "plain": "valid"}  # what `measure` read, flip first
    metrics = {name: measured[view] for view, name in views.items() if view in measured}
    card = card.replace(metrics=metrics, provenance=portable_paths(provenance))
    if args.suite:
        card = with_suite(card, args.suite)
    out = save_weights(model, destination, card)
    print(f"wrote {out} ({out.stat().st_size / 1e6:.1f} MB)")
    print(json.dumps(measured, indent=2))


def previous_stage(weights: str) -> dict[str, Any]:
    """The provenance of the weights a second stage started from (a file or a run directory);
    a run's own card records no training time, so it is read from the run's history."""
    path = resolve_weights(weights)
    previous = dict(read_card(path).provenance)
    if "train_minutes" not in previous and (path.parent / "metrics.jsonl").is_file():
        history = read_history(path.parent)
        previous["train_minutes"] = round(sum(h.epoch_seconds for h in history) / 60, 1)
    return previous


if __name__ == "__main__":
    try:
        main()
    except QcsferError as exc:  # a message, not a traceback
        raise SystemExit(f"{Path(__file__).name}: error: {exc}") from None
