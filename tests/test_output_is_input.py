"""An output path that is also an input is refused before anything is written (issue 27, item 3).

`qcsfer export W.safetensors --out W.safetensors` replaced the weights with ONNX, and
`qcsfer evaluate RUN --out RUN` replaced the run's own confusion_matrix.png. Every command and
tool that reads files and writes one checks the two against each other (as the same file by
any path or link), and names both.
"""

from __future__ import annotations

import runpy
import shutil
import sys
from pathlib import Path
from typing import Any

import pytest

from qcsfer.cli import main
from qcsfer.config import TrainConfig, save_config
from qcsfer.outputs import OutputError

from .conftest import FERPLUS, REPO
from .test_cli_failures import ALL_CLASSES_OPTION, gray_face
from .test_inference import save_tiny


@pytest.fixture
def weights(tmp_path: Path) -> Path:
    return save_tiny(tmp_path / "tiny.safetensors")


def cli(args: list[object], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    code = main(["-q", *map(str, args)])
    return code, capsys.readouterr().err


def test_export_refuses_to_write_over_its_weights_or_their_card(
    weights: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    before = weights.read_bytes(), weights.with_suffix(".json").read_bytes()
    for out in (weights, weights.with_suffix(".json"), tmp_path / "." / weights.name):
        code, err = cli(["export", weights, "--out", out], capsys)
        assert code == 2 and "is also an input of this command" in err, err
    link = tmp_path / "link.safetensors"
    link.symlink_to(weights)
    code, err = cli(["export", link, "--out", weights], capsys)
    assert code == 2 and "is also an input" in err
    assert (weights.read_bytes(), weights.with_suffix(".json").read_bytes()) == before


def test_convert_refuses_to_write_over_its_checkpoint(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    checkpoint = tmp_path / "QCS_raf-db.pth"
    checkpoint.write_bytes(b"the authors' checkpoint")
    code, err = cli(["convert", checkpoint, "--dataset", "rafdb", "--out", checkpoint], capsys)
    assert code == 2 and f"{checkpoint}: is also an input" in err, err
    assert checkpoint.read_bytes() == b"the authors' checkpoint"


def test_evaluate_refuses_to_write_into_a_run_directory(
    weights: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    save_config(TrainConfig(), run_dir / "config.yaml")
    shutil.copy(weights, run_dir / "best.safetensors")
    shutil.copy(weights.with_suffix(".json"), run_dir / "best.json")
    (run_dir / "confusion_matrix.png").write_bytes(b"the run's own validation matrix")
    faces = tmp_path / "faces" / "happiness"
    faces.mkdir(parents=True)
    gray_face(faces / "0.png")
    data = ["--data", f"folder:{faces.parent}", *ALL_CLASSES_OPTION, "--device", "cpu"]

    code, err = cli(["evaluate", run_dir, *data, "--out", run_dir], capsys)
    assert code == 2 and "is a training run's directory" in err, err
    assert (run_dir / "confusion_matrix.png").read_bytes() == b"the run's own validation matrix"
    assert not (run_dir / "metrics.json").exists()

    code, err = cli(["evaluate", run_dir, *data, "--out", run_dir / "evaluation"], capsys)
    assert code == 0, err
    assert (run_dir / "evaluation" / "metrics.json").is_file()


def run_tool(name: str, args: list[object], monkeypatch: pytest.MonkeyPatch) -> None:
    """tools/NAME.py's main() in this process, with `args` as its command line."""
    tool: dict[str, Any] = runpy.run_path(str(REPO / "tools" / name))
    monkeypatch.setattr(sys, "argv", [name, *map(str, args)])
    tool["main"]()


def test_the_tools_refuse_to_write_over_an_input(
    weights: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    checkpoint = tmp_path / "last.pt"
    checkpoint.write_bytes(b"a checkpoint")  # refused before anything is read
    other = tmp_path / "other.pt"
    other.write_bytes(b"another")
    with pytest.raises(OutputError, match=r"last\.pt: is also an input"):
        run_tool("average_checkpoints.py", [checkpoint, other, checkpoint], monkeypatch)
    with pytest.raises(OutputError, match="is also an input"):
        run_tool(
            "interpolate_weights.py",
            [other, "--start", weights, "--end", checkpoint, other, "--write", 0.5],
            monkeypatch,
        )
    with pytest.raises(OutputError, match=r"tiny\.json: is also an input"):  # the start's card
        args = [weights.with_suffix(".json"), "--start", weights, "--end", checkpoint]
        run_tool("interpolate_weights.py", [*args, "--write", 0.5], monkeypatch)
    with pytest.raises(OutputError, match=r"last\.pt: is also an input"):
        args = [tmp_path, "--checkpoint", checkpoint, "--out", checkpoint]
        run_tool("ship_model.py", args, monkeypatch)
    assert checkpoint.read_bytes() == b"a checkpoint" and other.read_bytes() == b"another"


@pytest.mark.skipif(not (FERPLUS / "FER2013Valid").is_dir(), reason="FERPlus not found")
def test_the_video_demo_refuses_to_write_over_its_photo(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    tool: dict[str, Any] = runpy.run_path(str(REPO / "tools" / "video_demo.py"))
    repo = tmp_path / "repo"  # a copy of the photo it reads, never the repository's own
    photo = repo / "src" / "qcsfer" / "assets" / "astronaut.jpg"
    photo.parent.mkdir(parents=True)
    shutil.copy(REPO / "src" / "qcsfer" / "assets" / "astronaut.jpg", photo)
    before = photo.read_bytes()
    monkeypatch.setitem(tool["main"].__globals__, "ROOT", repo)
    monkeypatch.setattr(sys, "argv", ["video_demo.py", str(photo)])
    with pytest.raises(OutputError, match=r"astronaut\.jpg: is also an input"):
        tool["main"]()
    assert photo.read_bytes() == before
