"""The CLI prints qcsfer's own errors as one line; a torch RuntimeError keeps its traceback."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from qcsfer import cli
from qcsfer.cli import model_files
from qcsfer.errors import NotFoundError


def test_own_errors_are_one_line_and_debug_shows_the_traceback(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = tmp_path / "nothing.safetensors"
    assert cli.main(["info", str(missing)]) == 2
    assert capsys.readouterr().err.strip() == f"qcsfer info: error: no weights file at {missing}"
    with pytest.raises(NotFoundError, match="no weights file"):
        cli.main(["--debug", "info", str(missing)])


def test_torch_runtime_errors_are_not_hidden(monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(args: argparse.Namespace) -> int:
        raise RuntimeError("mat1 and mat2 shapes cannot be multiplied")

    monkeypatch.setattr(model_files, "_info", broken)
    with pytest.raises(RuntimeError, match="shapes cannot be multiplied"):
        cli.main(["info", "default"])
