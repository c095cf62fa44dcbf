"""The CLI prints qcsfer's own errors as one line; a plain ValueError or a torch RuntimeError
keeps its traceback (a bug, not bad input)."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from qcsfer import cli
from qcsfer.cli import model_files
from qcsfer.data.datasets import read_dataset
from qcsfer.errors import ConfigError, DatasetError, NotFoundError, QcsferError, UsageError


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


def test_a_typed_error_from_deep_inside_is_one_line_with_exit_code_2(
    capsys: pytest.CaptureFixture[str],
) -> None:
    # raised by OptimConfig.__post_init__ while typed_data reads the --set values
    assert cli.main(["train", "--set", "optim.lr=0"]) == 2
    message = "qcsfer train: error: optim.lr must be positive, got 0.0"
    assert capsys.readouterr().err.strip() == message
    with pytest.raises(ConfigError, match=r"optim\.lr must be positive"):
        cli.main(["--debug", "train", "--set", "optim.lr=0"])


def test_a_plain_value_error_is_a_bug_not_a_user_error(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def broken(args: argparse.Namespace) -> int:
        raise ValueError("operands could not be broadcast together")

    monkeypatch.setattr(model_files, "_info", broken)
    with pytest.raises(ValueError, match="could not be broadcast"):
        cli.main(["info", "default"])
    assert "error:" not in capsys.readouterr().err


def test_typed_errors_are_still_value_errors() -> None:
    """Code that caught ValueError before the typed errors still catches them."""
    assert issubclass(ConfigError, UsageError) and issubclass(UsageError, ValueError)
    assert issubclass(DatasetError, QcsferError) and issubclass(DatasetError, ValueError)


def test_a_label_file_that_is_not_utf8_is_a_dataset_error(tmp_path: Path) -> None:
    labels = tmp_path / "EmoLabel" / "list_patition_label.txt"
    labels.parent.mkdir()
    labels.write_bytes("train_00001_caf\xe9.jpg 1\n".encode("latin-1"))
    with pytest.raises(DatasetError, match="not UTF-8 text"):
        read_dataset("rafdb", tmp_path, "train")


def test_predict_on_a_folder_without_images_is_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main(["-q", "predict", "--model", "ferplus", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"qcsfer predict: error: no images or videos found in {tmp_path}"
