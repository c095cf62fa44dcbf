"""The `qcsfer` command: thin sub-commands that parse, call the library and print."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from . import __version__


def _data(args: argparse.Namespace) -> int:
    from .data.datasets import read_dataset

    options = dict(_parse_options(args.option))
    for split in args.split:
        data = read_dataset(args.format, args.root, split, **options)
        print(f"{data.name} / {split}: {len(data)} images, {data.num_classes} classes")
        for name, count in zip(data.classes, data.class_counts(), strict=True):
            print(f"  {name:<12}{count:>8}")
        for reason, count in data.notes.items():
            print(f"  ({count} rows {reason})")
    return 0


def _train(args: argparse.Namespace) -> int:
    from .config import load_config
    from .engine.trainer import train

    if args.resume:
        run_dir = train(load_config(None, []), Path(args.resume), resume=True)
    else:
        config = load_config(args.config, args.set)
        run_dir = train(config, Path(args.run_dir) if args.run_dir else None)
    print(f"run directory: {run_dir}")
    return 0


def _parse_options(items: list[str]) -> list[tuple[str, object]]:
    import yaml

    out = []
    for item in items:
        if "=" not in item:
            raise SystemExit(f"--option expects key=value, got {item!r}")
        key, value = item.split("=", 1)
        out.append((key, yaml.safe_load(value)))
    return out


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="qcsfer", description="QCS facial expression recognition: train, evaluate, predict."
    )
    parser.add_argument("--version", action="version", version=f"qcsfer {__version__}")
    parser.add_argument("-q", "--quiet", action="store_true", help="only warnings and errors")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("data", help="read a dataset and print its class counts")
    p.add_argument("root", help="dataset root (for csv: the list file)")
    p.add_argument("--format", default="ferplus", help="ferplus | rafdb | affectnet | folder | csv")
    p.add_argument("--split", nargs="+", default=["train", "valid"])
    p.add_argument("--option", action="append", default=[], metavar="KEY=VALUE",
                   help="reader option, e.g. label_mode=probability")
    p.set_defaults(func=_data)

    p = sub.add_parser("train", help="train a baseline, DCS or QCS model")
    p.add_argument("config", nargs="?", help="YAML recipe (see configs/)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value, e.g. --set optim.lr=1e-4 (repeatable)")
    p.add_argument("--run-dir", help="where to write the run (default runs/<name>)")
    p.add_argument("--resume", metavar="RUN_DIR", help="continue the run in RUN_DIR exactly")
    p.set_defaults(func=_train)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.WARNING if args.quiet else logging.INFO,
        format="%(asctime)s %(levelname)s %(message)s",
        datefmt="%H:%M:%S",
    )
    try:
        return args.func(args)
    except (ValueError, FileNotFoundError, RuntimeError) as exc:
        print(f"qcsfer {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
