"""Nothing a user points a run at is destroyed (issue 27, items 1, 2, 9 and 10).

--overwrite replaces only a recognisable qcsfer run and removes only the files a run writes;
a checkpoint that cannot be written (full disk, file-size limit) is one line and keeps
everything already written; a run killed before its first checkpoint has one way forward;
a resume with --set that is killed early is not reported as a hand edit. Tiny baseline runs on
a generated dataset, a few seconds each.
"""

from __future__ import annotations

import logging
import resource
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch

from qcsfer.cli import main
from qcsfer.config import save_config
from qcsfer.engine.checkpoint import load_checkpoint
from qcsfer.engine.run_claim import RunDirError, leftover_temporaries
from qcsfer.engine.trainer import train
from qcsfer.errors import TrainingError

from .test_fault_injection import config, overrides, write_faces


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


# ---------------------------------------------------------------------------- item 2: full disks

TORCH_WRITE_FAILURE = "[enforce fail at inline_container.cc:672] . unexpected pos 704 vs 598"


def test_a_failed_first_last_pt_is_one_line_and_keeps_the_epochs_results(
    faces: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """torch.save raises RuntimeError, not OSError, for ENOSPC/EFBIG; the first save of the
    run is best.pt (end of epoch 1), the second last.pt."""
    run_dir = tmp_path / "run"
    real_save, calls = torch.save, [0]

    def disk_fills_after_best(obj: object, f: object, *args: object, **kwargs: object) -> None:
        calls[0] += 1
        if calls[0] == 2:
            raise RuntimeError(TORCH_WRITE_FAILURE)
        real_save(obj, f, *args, **kwargs)

    monkeypatch.setattr(torch, "save", disk_fills_after_best)
    settings = [arg for item in overrides(faces, epochs=1) for arg in ("--set", item)]
    code = main(["-q", "train", "--run-dir", str(run_dir), *settings])
    err = capsys.readouterr().err
    assert code == 2
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert f"{run_dir / 'last.pt'}: cannot write" in err and "disk full" in err
    assert "cannot be resumed" in err and "best.pt" in err
    left = {p.name for p in run_dir.iterdir()}
    assert {"best.pt", "best.safetensors", "metrics.jsonl", "train.log", "config.yaml"} <= left
    assert "last.pt" not in left and "run.lock" not in left
    assert leftover_temporaries(run_dir) == []
    assert load_checkpoint(run_dir / "best.pt")["epoch"] == 1  # intact


@contextmanager
def file_size_limit(limit: int) -> Iterator[None]:
    """`ulimit -f` for this process (Python ignores SIGXFSZ, so writes fail with EFBIG)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))


def test_a_file_size_limit_names_the_file_and_the_os_reason(tmp_path: Path) -> None:
    """A real EFBIG: torch.save's RuntimeError and safetensors' SafetensorError both become
    'FILE: cannot write (File too large)', and no partial file is left."""
    from qcsfer.engine.checkpoint import save_checkpoint
    from qcsfer.models.weights import network_card, save_weights
    from qcsfer.outputs import OutputError
    from qcsfer.preprocessing import Preprocessing
    from qcsfer.typed_data import to_dict

    from .model_builders import tiny_model

    model = tiny_model("baseline")
    with file_size_limit(100_000), pytest.raises(OutputError) as checkpoint_error:
        save_checkpoint({"model": model.state_dict()}, tmp_path / "last.pt")
    assert str(checkpoint_error.value).startswith(f"{tmp_path / 'last.pt'}: cannot write")
    assert "File too large" in str(checkpoint_error.value)
    with file_size_limit(100_000), pytest.raises(OutputError, match="File too large"):
        save_weights(
            model,
            tmp_path / "best.safetensors",
            network_card(
                model,
                classes=[str(i) for i in range(5)],
                preprocessing=to_dict(Preprocessing(image_size=48, load_size=48)),
                mode="baseline",
            ),
        )
    assert list(tmp_path.iterdir()) == []


# ---------------------------------------------------------------------------- item 9: no checkpoint


def test_a_run_killed_before_its_first_checkpoint_has_one_way_forward(
    faces: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """What SIGKILL during data loading leaves: config.yaml and train.log, no last.pt."""
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    save_config(config(faces, max_steps=1), run_dir / "config.yaml")
    (run_dir / "train.log").write_text("... loading the data\n")
    command = f"qcsfer train {run_dir / 'config.yaml'} --run-dir {run_dir} --overwrite"

    with pytest.raises(TrainingError, match=r"stopped before its first last\.pt") as resumed:
        train(None, run_dir, resume=True)
    assert command in str(resumed.value)
    with pytest.raises(RunDirError, match="nothing to resume: replace it with --overwrite") as new:
        train(config(faces, max_steps=1), run_dir)
    assert "--resume" not in str(new.value)
    assert sorted(p.name for p in run_dir.iterdir()) == ["config.yaml", "train.log"]  # untouched

    assert main(["-q", *command.split()[1:]]) == 0, capsys.readouterr().err
    assert load_checkpoint(run_dir / "last.pt")["step"] == 1


# ---------------------------------------------------------------------- item 10: --set, killed


def test_a_resume_with_set_killed_early_is_not_reported_as_an_edit(
    faces: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    run_dir = tmp_path / "run"
    train(config(faces, max_steps=2), run_dir)

    def killed(*args: object, **kwargs: object) -> torch.Tensor:
        raise SystemExit("killed in the first step")  # as SIGKILL would: no checkpoint

    with pytest.raises(SystemExit):
        train(None, run_dir, resume=True, overrides=["max_steps=4"], loss=killed)
    assert load_checkpoint(run_dir / "last.pt")["step"] == 2
    with caplog.at_level(logging.WARNING):
        train(None, run_dir, resume=True, overrides=["max_steps=4"])
    assert "was edited" not in caplog.text
    assert not (run_dir / "config.edited.yaml").exists()
    assert load_checkpoint(run_dir / "last.pt")["step"] == 4
    assert "max_steps: 4" in (run_dir / "config.yaml").read_text()  # it describes last.pt
