"""What the reports of a model's benchmarks share (`robustness.py`, `generalization.py`): the
model's name in them, the machine they ran on, and the JSON and markdown files they go to."""

from __future__ import annotations

import json
import os
import platform
from pathlib import Path

import cv2
import torch

from qcsfer.io import atomic_write
from qcsfer.pretrained import DEFAULT_WEIGHTS


def model_name(model: str | Path) -> str:
    """The name results give a model: a directory's name, the default weights' name for
    `default`, or a file's stem."""
    path = Path(str(model))
    if path.is_dir():
        return path.name
    return DEFAULT_WEIGHTS if model == "default" else (path.stem or path.name)


def machine() -> str:
    """The CPU (its model name where /proc/cpuinfo gives one), cores, threads and versions."""
    cpu = platform.processor() or platform.machine()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        names = [
            ln.split(":", 1)[1].strip()
            for ln in cpuinfo.read_text().splitlines()
            if ln.startswith("model name")
        ]
        cpu = names[0] if names else cpu
    return (
        f"{cpu}, {os.cpu_count()} cores, {torch.get_num_threads()} torch threads, "
        f"torch {torch.__version__}, OpenCV {cv2.__version__}, Python {platform.python_version()}"
    )


def write_report(out_dir: Path, stem: str, result: dict, table: str) -> None:
    """`out_dir/stem.json` (the result) and `out_dir/stem.md` (its table), each written
    atomically: a reader sees the old file or the whole new one."""
    text = json.dumps(result, indent=2) + "\n"
    atomic_write(out_dir / f"{stem}.json", lambda path: path.write_text(text))
    atomic_write(out_dir / f"{stem}.md", lambda path: path.write_text(table))
