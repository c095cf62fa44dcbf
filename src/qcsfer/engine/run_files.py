"""The files a training run writes, and how a folder is recognised as a run.

`--overwrite` and the clean-up of a failed start may only ever remove what a run wrote, in a
folder that is recognisably a qcsfer run: its config.yaml is a qcsfer configuration, or its
last.pt/best.pt is a qcsfer checkpoint. Anything else in the folder (notes, a project's
sources) is never touched. Results (checkpoints, metrics, the best model) are never removed
on a failure: only an explicit --overwrite replaces them.
"""

from __future__ import annotations

import contextlib
from dataclasses import fields
from pathlib import Path

import yaml

from ..errors import TrainingError

LOCK_NAME = "run.lock"
# What a run writes into its directory (besides run.lock and temporaries of atomic writes).
SETUP_FILES = ("config.yaml", "config.edited.yaml", "train.log", "validation_split.json")
RESULT_FILES = (
    "last.pt",
    "best.pt",
    "best.safetensors",
    "best.json",
    "metrics.jsonl",
    "curves.png",
    "confusion_matrix.png",
)
# Its sub-folders, with the names of the files it writes there.
RUN_FOLDERS = {"checkpoints": "step-*.pt", "tensorboard": "events.out.tfevents.*"}
# Top-level keys every config.yaml written by qcsfer has had (a recipe of another program
# called config.yaml has not all of them, or has keys qcsfer does not know).
CONFIG_CORE = frozenset(
    {"mode", "model", "data", "init", "optim", "schedule", "epochs", "batch_size", "seed"}
)


def temporaries(folder: Path) -> list[Path]:
    """Temporary files of interrupted atomic writes (see qcsfer.io.atomic_write) in `folder`."""
    return sorted(p for p in folder.glob(".*.tmp") if p.is_file()) if folder.is_dir() else []


def is_run_config(path: Path) -> bool:
    """True when `path` is a config.yaml as qcsfer writes it (every key a TrainConfig field)."""
    from ..config import TrainConfig  # config imports the data readers: only when asked

    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        return False
    known = {f.name for f in fields(TrainConfig)}
    return isinstance(data, dict) and CONFIG_CORE <= set(data) <= known


def is_run_checkpoint(path: Path) -> bool:
    """True when `path` is a qcsfer training checkpoint (read memory-mapped, no code run)."""
    from ..torch_files import not_a_torch_file

    if not path.is_file() or not_a_torch_file(path):
        return False
    import torch

    from .checkpoint import CHECKPOINT_FORMAT

    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception:  # torch raises many types for files that are not ours
        return False
    return isinstance(checkpoint, dict) and checkpoint.get("format") == CHECKPOINT_FORMAT


def is_run_dir(run_dir: Path) -> bool:
    """A folder recognisably written by a qcsfer run: its config or a checkpoint says so."""
    return is_run_config(run_dir / "config.yaml") or any(
        is_run_checkpoint(run_dir / name) for name in ("last.pt", "best.pt")
    )


def run_files(run_dir: Path) -> list[Path]:
    """The files a run wrote that are present in `run_dir` (sub-folders' files included)."""
    found = [run_dir / n for n in (*SETUP_FILES, *RESULT_FILES) if (run_dir / n).is_file()]
    found += temporaries(run_dir)
    for folder, pattern in RUN_FOLDERS.items():
        if (run_dir / folder).is_dir() and not (run_dir / folder).is_symlink():
            found += sorted(p for p in (run_dir / folder).glob(pattern) if p.is_file())
            found += temporaries(run_dir / folder)
    return found


def holds_results(run_dir: Path) -> bool:
    """True when anything worth keeping was written: a checkpoint, metrics, the best model."""
    return any((run_dir / name).is_file() for name in RESULT_FILES) or any(
        p.parent.name == "checkpoints" for p in run_files(run_dir)
    )


def remove_run_files(run_dir: Path) -> list[str]:
    """Remove the files a run writes (and its sub-folders once empty), nothing else.
    Returns the names of what is left besides run.lock: entries the run did not write."""
    for path in run_files(run_dir):
        path.unlink(missing_ok=True)
    for folder in RUN_FOLDERS:
        with contextlib.suppress(OSError):  # not empty, or absent: kept as it is
            (run_dir / folder).rmdir()
    return sorted(p.name for p in run_dir.iterdir() if p.name != LOCK_NAME)


def discard_failed_start(run_dir: Path) -> None:
    """After a new run failed: remove its set-up files unless it wrote results, which stay."""
    if holds_results(run_dir):
        return
    with contextlib.suppress(OSError):  # best effort: the original error is what matters
        remove_run_files(run_dir)


def kept_checkpoint(run_dir: Path) -> str:
    """What a stopped run leaves to continue from, for its message."""
    last = run_dir / "last.pt"
    if last.is_file():
        return f"the last complete checkpoint {last} is kept"
    return "no checkpoint had been written yet"


def write_failure(problem: str, run_dir: Path) -> TrainingError:
    """A write that failed mid-run (a full disk, a file-size limit), in one line: what failed,
    what is kept, and the one way forward."""
    if (run_dir / "last.pt").is_file():
        return TrainingError(
            f"{problem}; {kept_checkpoint(run_dir)} with everything written so far: free space "
            f"(or raise the file-size limit), then `qcsfer train --resume {run_dir}`"
        )
    kept = [p.name for p in run_files(run_dir) if p.name in RESULT_FILES]
    if kept:
        return TrainingError(
            f"{problem}; no checkpoint could be written, so the run cannot be resumed; what it "
            f"wrote is kept in {run_dir} ({', '.join(kept)}): free space (or raise the "
            "file-size limit), then start it again (--overwrite replaces it)"
        )
    return TrainingError(
        f"{problem}; no checkpoint had been written yet: free space (or raise the file-size "
        "limit), then start the run again"
    )


def last_checkpoint(run_dir: Path | None) -> Path:
    """The checkpoint `--resume` continues from, or the one way forward when there is none."""
    if run_dir is None:
        raise TrainingError("resuming needs the run directory")
    run_dir = Path(run_dir)
    last = run_dir / "last.pt"
    if last.is_file():
        return last
    if not run_dir.is_dir():
        raise TrainingError(f"cannot resume: {run_dir} does not exist")
    if is_run_config(run_dir / "config.yaml"):
        raise TrainingError(
            f"cannot resume {run_dir}: the run stopped before its first last.pt was written, so "
            "there is nothing to continue from; start it again with "
            f"`qcsfer train {run_dir / 'config.yaml'} --run-dir {run_dir} --overwrite`"
        )
    raise TrainingError(f"cannot resume: {run_dir} holds no qcsfer run (no {last.name})")
