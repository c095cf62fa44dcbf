"""Nothing a user points a run at is destroyed (issue 27, items 1, 2, 9 and 10).

--overwrite replaces only a recognisable qcsfer run and removes only the files a run writes;
a checkpoint that cannot be written (full disk, file-size limit) is one line and keeps
everything already written; a run killed before its first checkpoint has one way forward;
a resume with --set that is killed early is not reported as a hand edit. Tiny baseline runs on
a generated dataset, a few seconds each.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from qcsfer.engine.rundir import RunDirError
from qcsfer.engine.trainer import train

from .test_fault_injection import config, write_faces


@pytest.fixture
def faces(tmp_path: Path) -> Path:
    return write_faces(tmp_path / "faces", {"train": 8, "valid": 2})


def tree(folder: Path) -> dict[str, bytes]:
    """Every file under `folder` with its bytes (a folder's whole content, to compare)."""
    return {
        str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()
    }


# ---------------------------------------------------------------------------- item 1: --overwrite


@pytest.mark.parametrize(
    "config_text",
    [
        "name: my-project\nversion: 2\n",  # another program's config.yaml
        "mode: qcs\nepochs: 3\n",  # a few qcsfer-like keys: still not a config qcsfer wrote
    ],
)
def test_overwrite_refuses_a_folder_that_is_not_a_qcsfer_run(
    faces: Path, tmp_path: Path, config_text: str
) -> None:
    project = tmp_path / "project"
    (project / "src").mkdir(parents=True)
    (project / "config.yaml").write_text(config_text)
    (project / "train.log").write_text("my own log\n")
    (project / "README.md").write_text("# my project\n")
    (project / "src" / "main.py").write_text("print('hello')\n")
    before = tree(project)
    with pytest.raises(RunDirError, match="not a qcsfer run"):
        train(config(faces, max_steps=1), project, overwrite=True)
    assert tree(project) == before
    assert sorted(p.name for p in project.iterdir()) == [
        "README.md",
        "config.yaml",
        "src",
        "train.log",
    ]


def test_overwrite_removes_only_the_files_a_run_writes(faces: Path, tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    train(config(faces, epochs=1, keep_checkpoints=True, checkpoint_every_steps=2), run_dir)
    assert (run_dir / "checkpoints").is_dir() and (run_dir / "best.safetensors").is_file()
    (run_dir / "notes.txt").write_text("what I tried")
    (run_dir / "analysis").mkdir()
    (run_dir / "analysis" / "plot.py").write_text("...")
    (run_dir / "checkpoints" / "README").write_text("my note beside the checkpoints")

    train(config(faces, seed=1, max_steps=1), run_dir, overwrite=True)
    left = sorted(p.name for p in run_dir.iterdir())
    assert "best.safetensors" not in left and "metrics.jsonl" not in left  # the old run's
    assert (run_dir / "notes.txt").read_text() == "what I tried"
    assert (run_dir / "analysis" / "plot.py").read_text() == "..."
    assert [p.name for p in (run_dir / "checkpoints").iterdir()] == ["README"]


def test_a_run_is_recognised_by_its_checkpoint_when_its_config_is_gone(
    faces: Path, tmp_path: Path
) -> None:
    run_dir = tmp_path / "run"
    train(config(faces, max_steps=1), run_dir)
    (run_dir / "config.yaml").unlink()
    train(config(faces, seed=1, max_steps=1), run_dir, overwrite=True)
    assert (run_dir / "config.yaml").is_file()
