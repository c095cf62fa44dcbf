"""Runs that cannot be lost or mixed up (issue 12, items 1-6), under injected faults.

A process killed inside a checkpoint write, a disk that fills during a save, two trainings
started into one directory, a dataset changed before a resume, an existing run directory, an
edited config.yaml, evaluation sets with nothing to score. A generated 4-class folder dataset
and the `tiny` network keep every run to a few seconds, without ../shared.
"""

from __future__ import annotations

import errno
import logging
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from qcsfer.cli import main
from qcsfer.config import TrainConfig, load_config
from qcsfer.engine.checkpoint import load_checkpoint
from qcsfer.engine.run_claim import RunDirError, leftover_temporaries
from qcsfer.engine.trainer import train
from qcsfer.errors import TrainingError
from qcsfer.exits import Terminated
from qcsfer.models.qcs import branch_loss

from .conftest import REPO

CLASSES = ("anger", "happiness", "neutral", "sadness")
STEPS_PER_EPOCH = 4  # 32 training images, batches of 8


def write_faces(root: Path, per_class: dict[str, int]) -> Path:
    """root/<split>/<class>/<n>.png: a different brightness per class, under noise."""
    rng = np.random.default_rng(0)
    for split, count in per_class.items():
        for label, name in enumerate(CLASSES):
            (root / split / name).mkdir(parents=True)
            for n in range(count):
                pixels = rng.normal(60 + 40 * label, 20, (48, 48)).clip(0, 255).astype(np.uint8)
                Image.fromarray(pixels).save(root / split / name / f"{n}.png")
    return root


@pytest.fixture
def faces(tmp_path: Path) -> Path:
    return write_faces(tmp_path / "faces", {"train": 8, "valid": 2})


def overrides(root: Path, **extra: object) -> list[str]:
    """--set items of a tiny, fast baseline run on the generated dataset."""
    settings = {
        "mode": "baseline",
        "model": "tiny",
        "data.format": "folder",
        "data.root": str(root),
        "data.cache_dir": None,
        "preprocessing.image_size": 48,
        "preprocessing.load_size": 48,
        "preprocessing.grayscale": True,
        "schedule.name": "constant",
        "epochs": 2,
        "batch_size": 8,
        "eval_flip": False,
        "device": "cpu",
        "precision": "fp32",
        "channels_last": False,
        **extra,
    }
    return [f"{k}={'null' if v is None else v}" for k, v in settings.items()]


def config(root: Path, **extra: object) -> TrainConfig:
    return load_config(None, overrides(root, **extra))


def epochs_done(run_dir: Path) -> int:
    return load_checkpoint(run_dir / "last.pt")["epoch"]


# ---------------------------------------------------------------------------- the fault module


KILLED_IN_SAVE = """
import os, signal, sys
from pathlib import Path
import torch
from qcsfer.config import load_config
from qcsfer.engine.trainer import train

real_save, calls = torch.save, [0]

def save_then_die(obj, f, *args, **kwargs):
    calls[0] += 1
    if calls[0] == 3:  # the third checkpoint: half written, then SIGKILL
        f.write(b"half a checkpoint" * 5000)  # the open temporary file
        f.flush()
        os.kill(os.getpid(), signal.SIGKILL)
    return real_save(obj, f, *args, **kwargs)

torch.save = save_then_die
train(load_config(None, sys.argv[2:]), Path(sys.argv[1]))
"""


@pytest.mark.slow
def test_killed_inside_a_checkpoint_write(faces: Path, tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    settings = overrides(faces, checkpoint_every_steps=1)
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    killed = subprocess.run(
        [sys.executable, "-c", KILLED_IN_SAVE, str(run_dir), *settings],
        env=env,
        capture_output=True,
        timeout=600,
    )
    assert killed.returncode == -signal.SIGKILL, killed.stderr.decode()[-2000:]
    assert leftover_temporaries(run_dir)  # the kill left its half-written temporary file
    assert load_checkpoint(run_dir / "last.pt")["step"] == 2  # the last complete checkpoint
    assert (run_dir / "run.lock").exists()  # left by the killed process

    train(None, run_dir, resume=True)
    assert leftover_temporaries(run_dir) == []
    assert not (run_dir / "run.lock").exists()
    assert epochs_done(run_dir) == 2


@pytest.mark.slow
def test_disk_full_during_a_save_is_a_message_and_the_run_resumes(
    faces: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    run_dir = tmp_path / "run"
    real_save, calls = torch.save, [0]

    def fills_the_disk(obj: object, f: object, *args: object, **kwargs: object) -> None:
        calls[0] += 1
        if calls[0] == 3:
            f.write(b"the first megabytes")  # type: ignore[attr-defined]
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real_save(obj, f, *args, **kwargs)

    monkeypatch.setattr(torch, "save", fills_the_disk)
    with pytest.raises(TrainingError, match="No space left on device") as info:
        train(config(faces, checkpoint_every_steps=1), run_dir)
    assert f"qcsfer train --resume {run_dir}" in str(info.value)
    assert leftover_temporaries(run_dir) == []
    assert load_checkpoint(run_dir / "last.pt")["step"] == 2  # the previous one, intact
    assert not (run_dir / "run.lock").exists()

    monkeypatch.setattr(torch, "save", real_save)
    train(None, run_dir, resume=True)
    assert epochs_done(run_dir) == 2


LOCK_HOLDER = """
import sys, time
from pathlib import Path
from qcsfer.engine.run_claim import RunLock
RunLock(Path(sys.argv[1])).acquire()
print("locked", flush=True)
time.sleep(600)
"""


@pytest.mark.slow
def test_a_second_start_into_a_locked_directory_is_refused(
    faces: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    holder = subprocess.Popen(
        [sys.executable, "-c", LOCK_HOLDER, str(run_dir)],
        stdout=subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": str(REPO / "src")},
    )
    try:
        assert holder.stdout.readline() == b"locked\n"
        with pytest.raises(RunDirError, match=f"in use by pid {holder.pid} "):
            train(config(faces, max_steps=1), run_dir)
        assert sorted(p.name for p in run_dir.iterdir()) == ["run.lock"]  # nothing written
    finally:
        holder.kill()  # SIGKILL: the lock file stays behind, the OS lock does not
        holder.wait()
    with caplog.at_level(logging.WARNING):
        train(config(faces, max_steps=1), run_dir)
    assert f"stale lock of pid {holder.pid}" in caplog.text
    assert not (run_dir / "run.lock").exists()


@pytest.mark.slow
def test_a_changed_dataset_is_refused_on_resume_with_the_difference(
    faces: Path, tmp_path: Path
) -> None:
    run_dir = tmp_path / "run"
    train(config(faces, max_steps=2), run_dir)
    for name in ("0.png", "1.png"):
        (faces / "train" / "anger" / name).unlink()
    more = ["max_steps=8"]  # the first run spent its budget of 2 steps
    with pytest.raises(TrainingError, match="train: 32 -> 30 images, anger 8 -> 6"):
        train(None, run_dir, resume=True, overrides=more)
    train(None, run_dir, resume=True, overrides=more, allow_data_change=True)
    assert epochs_done(run_dir) == 2


# ---------------------------------------------------------------------------- run directories


@pytest.mark.slow
def test_a_new_run_never_mixes_with_an_earlier_one(faces: Path, tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    train(config(faces, epochs=1), run_dir)
    best = (run_dir / "best.safetensors").read_bytes()
    with pytest.raises(RunDirError, match="already holds a run"):
        train(config(faces, epochs=1, seed=1), run_dir)
    assert (run_dir / "best.safetensors").read_bytes() == best

    train(config(faces, seed=1, max_steps=2), run_dir, overwrite=True)
    left = sorted(p.name for p in run_dir.iterdir())
    assert "best.safetensors" not in left and "metrics.jsonl" not in left  # the old run's
    assert load_checkpoint(run_dir / "last.pt")["config"]["seed"] == 1

    other = tmp_path / "not-a-run"
    other.mkdir()
    (other / "notes.txt").write_text("mine")
    with pytest.raises(RunDirError, match="not a qcsfer run"):
        train(config(faces, max_steps=1), other, overwrite=True)
    assert (other / "notes.txt").read_text() == "mine"


def test_a_failed_start_leaves_no_run_directory(faces: Path, tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    with pytest.raises(ValueError, match="does not exist"):
        train(config(tmp_path / "no-such-data"), run_dir)
    assert not run_dir.exists()


@pytest.mark.slow
def test_resume_says_what_it_does_with_finished_runs_edits_and_set(
    faces: Path,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    capsys: pytest.CaptureFixture[str],
) -> None:
    run_dir = tmp_path / "run"
    train(config(faces, epochs=1), run_dir)
    before = (run_dir / "last.pt").stat().st_mtime_ns
    with caplog.at_level(logging.INFO):
        train(None, run_dir, resume=True)
    assert "already finished (1 of 1 epochs)" in caplog.text and "--set epochs=" in caplog.text
    assert (run_dir / "last.pt").stat().st_mtime_ns == before

    for args in (["--set", "optim.lr=0.1"], ["--overwrite"]):  # refused, whatever the run
        assert main(["-q", "train", "--resume", str(run_dir), *args]) == 2
    err = capsys.readouterr().err
    assert "--set optim.lr cannot change when resuming" in err and "drop the config" in err

    text = (run_dir / "config.yaml").read_text()
    (run_dir / "config.yaml").write_text(text.replace("epochs: 1", "epochs: 2"))
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        train(None, run_dir, resume=True, overrides=["epochs=2"])
    assert "config.yaml was edited after the run started (epochs: 1 -> 2)" in caplog.text
    assert (run_dir / "config.edited.yaml").is_file()
    assert epochs_done(run_dir) == 2
    assert "epochs: 2" in (run_dir / "config.yaml").read_text()


@pytest.mark.slow
def test_leftover_temporary_files_are_removed_on_start(
    faces: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    run_dir = tmp_path / "run"
    train(config(faces, max_steps=1), run_dir)
    junk = run_dir / ".last.pt.abc123.tmp"
    junk.write_bytes(b"\0" * 1000)
    train(None, run_dir, resume=True, overrides=["max_steps=2"])
    assert not junk.exists()
    with caplog.at_level(logging.INFO):
        train(None, run_dir, resume=True)
    assert "already finished (2 of 2 steps)" in caplog.text


@pytest.mark.slow
def test_a_non_finite_loss_names_a_checkpoint_only_when_one_exists(
    faces: Path, tmp_path: Path
) -> None:
    def diverged(logits: torch.Tensor, targets: torch.Tensor, keep: object = None) -> torch.Tensor:
        return branch_loss(logits, targets, keep) * float("nan")

    with pytest.raises(TrainingError, match="no checkpoint had been written yet"):
        train(config(faces), tmp_path / "run", loss=diverged)
    assert not (tmp_path / "run").exists()  # nor a junk run directory


@pytest.mark.slow
def test_sigterm_stops_training_resumably_as_terminated(faces: Path, tmp_path: Path) -> None:
    calls = [0]

    def terminated(logits: torch.Tensor, targets: torch.Tensor, keep: object = None) -> object:
        calls[0] += 1
        if calls[0] == 2:  # `kill PID` or a job scheduler, inside the second step
            os.kill(os.getpid(), signal.SIGTERM)
        return branch_loss(logits, targets, keep)

    with pytest.raises(Terminated):  # the command line exits 143 for it, not Ctrl-C's 130
        train(config(faces), tmp_path / "run", loss=terminated)
    assert load_checkpoint(tmp_path / "run" / "last.pt")["step"] == 2


# ---------------------------------------------------------------------------- what is trained on


def test_an_empty_or_unreadable_validation_split_is_refused(faces: Path, tmp_path: Path) -> None:
    for image in (faces / "valid").rglob("*.png"):
        image.write_bytes(b"not an image")
    with pytest.raises(RuntimeError, match="no readable images in the validation split"):
        train(config(faces), tmp_path / "run")


def test_a_class_whose_images_are_all_unreadable_is_refused(faces: Path, tmp_path: Path) -> None:
    for image in (faces / "train" / "sadness").glob("*.png"):
        image.write_bytes(b"")
    with pytest.raises(ValueError, match=r"no images for class\(es\) \['sadness'\]"):
        train(config(faces), tmp_path / "run")


@pytest.mark.slow
def test_an_epoch_resumed_after_its_last_step_records_no_rate(
    faces: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from qcsfer.engine import trainer as trainer_module

    run_dir = tmp_path / "run"
    real = trainer_module.evaluate_split

    def interrupted(*args: object, **kwargs: object) -> object:  # Ctrl-C during validation
        raise KeyboardInterrupt

    monkeypatch.setattr(trainer_module, "evaluate_split", interrupted)
    with pytest.raises(KeyboardInterrupt):
        train(config(faces, epochs=1, checkpoint_every_steps=STEPS_PER_EPOCH), run_dir)
    assert load_checkpoint(run_dir / "last.pt")["batch"] == STEPS_PER_EPOCH
    monkeypatch.setattr(trainer_module, "evaluate_split", real)
    train(None, run_dir, resume=True)
    (record,) = load_checkpoint(run_dir / "last.pt")["history"]
    assert record["images_per_second"] is None  # not measured, rather than 0


def test_an_option_added_since_the_run_started_is_no_edit(tmp_path: Path) -> None:
    """A run started before `logit_adjustment` existed has a config.yaml without it: resuming
    must not report that as a hand edit (an actual edit still is)."""
    import yaml

    from qcsfer.config import TrainConfig, to_dict
    from qcsfer.engine.resume import keep_edited_config

    config = TrainConfig(model="tiny")
    older = to_dict(config)
    del older["logit_adjustment"]
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(older))
    assert keep_edited_config(tmp_path, config) == []
    assert (tmp_path / "config.yaml").is_file()
    (tmp_path / "config.yaml").write_text(yaml.safe_dump({**older, "epochs": 3}))
    assert keep_edited_config(tmp_path, config) == ["epochs: 10 -> 3"]
