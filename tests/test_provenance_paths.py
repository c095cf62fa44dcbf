"""Provenance holds paths relative to the repository, never a machine's absolute paths
(issue 27, item 18: the shipped card's `command` named a developer machine's run folder)."""

from __future__ import annotations

import json
import os
import runpy
import sys
from pathlib import Path
from typing import Any

import pytest

from qcsfer.engine.trainer import train
from qcsfer.pretrained import load_card

from .conftest import REPO
from .test_fault_injection import config, write_faces


def absolute_paths(value: Any) -> list[str]:
    """Every word of every string in `value` that is an absolute path (recursively)."""
    if isinstance(value, dict):
        return [p for item in value.values() for p in absolute_paths(item)]
    if isinstance(value, list):
        return [p for item in value for p in absolute_paths(item)]
    if isinstance(value, str):
        return [word for word in value.split() if os.path.isabs(word)]
    return []


def test_the_shipped_card_names_no_absolute_path() -> None:
    provenance = load_card("ferplus").provenance
    assert absolute_paths(provenance) == []
    assert "tools/ship_model.py ../runs/robust-ferplus-long" in provenance["command"]


@pytest.mark.slow
def test_ship_model_writes_paths_relative_to_the_repository(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    faces = write_faces(tmp_path / "faces", {"train": 8, "valid": 2})
    run_dir = train(config(faces, epochs=1), tmp_path / "run")
    tool: dict[str, Any] = runpy.run_path(str(REPO / "tools" / "ship_model.py"))
    measured = {"plain": {"accuracy": 0.5, "balanced_accuracy": 0.5, "macro_f1": 0.5}}
    monkeypatch.setitem(tool["main"].__globals__, "measure", lambda weights, data: measured)
    out = tmp_path / "shipped.safetensors"
    argv = [str(run_dir), "--checkpoint", str(run_dir / "best.pt"), "--out", str(out)]
    monkeypatch.setattr(sys, "argv", ["ship_model.py", *argv])
    tool["main"]()

    provenance = json.loads(out.with_suffix(".json").read_text())["provenance"]
    assert absolute_paths(provenance) == []
    run = os.path.relpath(run_dir, REPO)
    assert provenance["command"].endswith(f"ship_model.py {run} --checkpoint {run}/best.pt")
    assert provenance["config"]["data"]["root"] == os.path.relpath(faces, REPO)
