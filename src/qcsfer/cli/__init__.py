"""The `qcsfer` command: thin sub-commands that parse, call the library and print.

One module per group of commands, each adding its own (`add_commands`): training.py (data,
train, evaluate), recognition.py (predict, explain, serve) and model_files.py (info, export,
convert); options.py holds the argument types and option groups they share.

qcsfer's own errors (errors.py: bad input the user can fix) and OSErrors end in one line and
exit code 2 (--debug: the traceback); anything else, a plain ValueError included, is a bug
and keeps its traceback.
"""

from __future__ import annotations

import argparse
import logging
import sys

from .. import __version__
from ..errors import QcsferError
from ..exits import run_until_stopped
from . import model_files, recognition, training
from .options import attach_negative_values, resolve_reference


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="qcsfer", description="QCS facial expression recognition: train, evaluate, predict."
    )
    parser.add_argument("--version", action="version", version=f"qcsfer {__version__}")
    parser.add_argument("-q", "--quiet", action="store_true", help="only warnings and errors")
    parser.add_argument(
        "--debug", action="store_true", help="show the full traceback of an error, not one line"
    )
    sub = parser.add_subparsers(dest="command", required=True)
    for group in (training, recognition, model_files):
        group.add_commands(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(attach_negative_values(sys.argv[1:] if argv is None else argv))
    logging.basicConfig(
        level=logging.WARNING if args.quiet else logging.INFO,
        format="%(asctime)s %(levelname)s %(message)s",
        datefmt="%H:%M:%S",
    )
    if hasattr(sys.stdout, "reconfigure"):  # file names as the OS gives them, even undecodable
        sys.stdout.reconfigure(errors="surrogateescape")
    try:
        resolve_reference(args)
        return run_until_stopped(lambda: args.func(args), args.command)
    except (QcsferError, OSError) as exc:  # a plain ValueError or RuntimeError is a bug
        if args.debug:
            raise
        print(f"qcsfer {args.command}: error: {_message(exc)}", file=sys.stderr)
        return 2


def _message(exc: Exception) -> str:
    """An OSError as 'FILE: reason' (which file and why); anything else as its own message."""
    if isinstance(exc, OSError) and exc.filename is not None and exc.strerror:
        return f"{exc.filename}: {exc.strerror}"
    return str(exc)
