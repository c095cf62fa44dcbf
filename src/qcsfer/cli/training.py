"""Datasets and training: `qcsfer data`, `train` and `evaluate`."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..errors import UsageError
from .options import at_least_zero, positive, reference_options


def add_commands(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("data", help="read a dataset and print its class counts")
    p.add_argument(
        "spec",
        help="FORMAT:ROOT, e.g. ferplus:../shared/datasets/ferplus "
        "(for csv the root is the list file)",
    )
    p.add_argument("--format", help="the format when SPEC is only a path")
    p.add_argument("--split", nargs="+", help="splits to read (default: the format's usual ones)")
    p.add_argument(
        "--check",
        type=at_least_zero,
        default=500,
        metavar="N",
        help="decode N random images per split to report sizes and unreadable files",
    )
    p.add_argument(
        "--option",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="reader option, e.g. label_mode=probability",
    )
    p.set_defaults(func=_data)

    p = sub.add_parser("train", help="train a baseline, DCS or QCS model")
    p.add_argument(
        "config",
        nargs="?",
        help="YAML recipe: a file, or the name of a packaged one (see `qcsfer recipes`)",
    )
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config value, e.g. --set optim.lr=1e-4 (repeatable)",
    )
    p.add_argument("--run-dir", help="where to write the run (default runs/<name>)")
    p.add_argument("--resume", metavar="RUN_DIR", help="continue the run in RUN_DIR exactly")
    p.add_argument(
        "--overwrite", action="store_true", help="replace the run already in the run directory"
    )
    p.add_argument(
        "--allow-data-change",
        action="store_true",
        help="resume although the data differ from the run's (the difference is logged)",
    )
    p.set_defaults(func=_train)

    p = sub.add_parser("recipes", help="list the packaged training recipes, or print one")
    p.add_argument("name", nargs="?", help="print this recipe's YAML (to copy and change it)")
    p.set_defaults(func=_recipes)

    p = sub.add_parser("evaluate", help="metrics of a model on a dataset split")
    p.add_argument(
        "weights",
        nargs="?",
        default="default",
        help="weights file, run directory (its best model), general, ferplus or 'default'",
    )
    p.add_argument(
        "--data",
        required=True,
        help="FORMAT:ROOT, e.g. ferplus:/data/FERPlus (for csv: the list file)",
    )
    p.add_argument("--format", help="the format when --data is only a path")
    p.add_argument("--split", default="test")
    p.add_argument("--option", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument(
        "--class-map",
        action="append",
        default=[],
        metavar="DATASET=MODEL",
        help="map a dataset class name onto a model class name (repeatable); "
        "dataset classes left out are excluded",
    )
    p.add_argument("--flip", action="store_true", help="average with the mirrored image (TTA)")
    p.add_argument("--device", default="auto")
    p.add_argument("--batch-size", type=positive, default=256)
    p.add_argument("--out", default="evaluation", help="folder for metrics.json and the PNG")
    p.add_argument(
        "--prior",
        default="dataset",
        choices=["dataset", "balanced"],
        help="operating point for the table: the training set's class mix (dataset) or corrected "
        "(balanced); both are reported",
    )
    reference_options(p, "weights")
    p.add_argument(
        "--no-cache", action="store_true", help="decode without the image cache (QCSFER_CACHE)"
    )
    p.set_defaults(func=_evaluate)


def _data(args: argparse.Namespace) -> int:
    from ..data.datasets import DEFAULT_SPLITS, parse_spec, read_dataset
    from ..data.records import DatasetError
    from ..data.summary import summarize

    data_format, root = parse_spec(args.spec, args.format)
    options = _key_values(args.option, typed=True)
    absent = []
    for split in args.split or DEFAULT_SPLITS[data_format]:
        try:
            data = read_dataset(data_format, root, split, **options)
        except DatasetError as exc:
            if args.split:  # asked for by name: an error; a default split may just be absent
                raise
            absent.append(exc)
            print(f"{data_format} / {split}: not available ({exc})\n")
            continue
        print(summarize(data, sample=args.check).table() + "\n")
    if len(absent) == len(args.split or DEFAULT_SPLITS[data_format]):
        raise absent[-1]  # nothing readable at all: that is an error
    return 0


def _train(args: argparse.Namespace) -> int:
    from ..config import load_config
    from ..engine.trainer import train

    if not (args.config or args.resume or args.set):  # a bare `train`: hours nobody asked for
        raise UsageError(
            "give a recipe to train (a file, or a packaged one's name: qcsfer recipes), "
            "--set KEY=VALUE to train the built-in defaults with changes, or --resume RUN_DIR"
        )
    if args.resume:
        if args.config or args.run_dir or args.overwrite:
            raise UsageError(
                "--resume continues a run with its own configuration: drop the config file, "
                "--run-dir and --overwrite (--set is accepted for options safe to change, "
                "such as epochs)"
            )
        run_dir = train(
            None,
            Path(args.resume),
            resume=True,
            overrides=args.set,
            allow_data_change=args.allow_data_change,
        )
    else:
        config = load_config(args.config, args.set)
        run_dir = train(
            config, Path(args.run_dir) if args.run_dir else None, overwrite=args.overwrite
        )
    print(f"run directory: {run_dir}")
    return 0


def _recipes(args: argparse.Namespace) -> int:
    from ..recipes import find_recipe, packaged_recipes

    if args.name:
        print(find_recipe(args.name).path.read_text(encoding="utf-8"), end="")
        return 0
    recipes = packaged_recipes()
    width = max((len(r.name) for r in recipes), default=0)
    for recipe in recipes:
        print(f"{recipe.name:<{width}}  {recipe.summary()}")
    print(
        "\nqcsfer train NAME [--set data.root=PATH] trains one; qcsfer recipes NAME > my.yaml "
        "copies it to change"
    )
    return 0


def _evaluate(args: argparse.Namespace) -> int:
    from ..data.datasets import parse_spec
    from ..engine.evaluate import evaluate

    data_format, root = parse_spec(args.data, args.format)
    mapping = _key_values(args.class_map, typed=False) or None
    evaluation = evaluate(
        args.weights,
        data_format,
        root,
        args.split,
        options=_key_values(args.option, typed=True),
        mapping=mapping,
        flip=args.flip,
        device=args.device,
        batch_size=args.batch_size,
        out_dir=args.out,
        prior=args.prior,
        cache=not args.no_cache,
    )
    print(evaluation.metrics.table())
    print(f"\noperating points (prior: {args.prior} above):")
    for p in evaluation.points.values():
        print(
            f"  prior={p.prior:<8} strength {p.prior_strength:.2f}  temperature "
            f"{p.temperature:.3f}  accuracy {p.accuracy:.4f}  balanced {p.balanced_accuracy:.4f}"
            f"  macro F1 {p.macro_f1:.4f}  ECE {p.ece_before:.4f} -> {p.ece_after:.4f} calibrated"
        )
    print(f"wrote {Path(args.out) / 'metrics.json'} and confusion_matrix.png")
    return 0


def _key_values(items: list[str], typed: bool) -> dict[str, object]:
    """KEY=VALUE arguments. Typed values are read as YAML (7 -> int, true -> bool); untyped ones
    stay strings (class names such as 'no' or '1' stay names)."""
    from ..config import yaml_value

    out: dict[str, object] = {}
    for item in items:
        if "=" not in item:
            raise UsageError(f"expected KEY=VALUE, got {item!r}")
        key, value = (part.strip() for part in item.split("=", 1))
        out[key] = yaml_value(value, f"--option {item}") if typed else value
    return out
