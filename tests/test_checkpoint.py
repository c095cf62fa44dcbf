"""The training checkpoint format: a round trip restores a run exactly; foreign files refused."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from qcsfer.config import load_config
from qcsfer.engine.checkpoint import (
    CHECKPOINT_VERSION,
    Checkpointer,
    RunState,
    load_checkpoint,
    model_from_checkpoint,
    save_checkpoint,
    weights_only,
)
from qcsfer.engine.epoch_record import EpochRecord, history_text, read_history
from qcsfer.engine.metrics import Metrics
from qcsfer.engine.optim import build_optimization
from qcsfer.errors import TrainingError
from qcsfer.models import QCSModel

CLASSES = ("calm", "glad", "sad")


def _run(tmp_path: Path, seed: int) -> Checkpointer:
    settings = ["model=tiny", "mode=dcs", "keep_checkpoints=true"]
    config = load_config(None, [*settings, "preprocessing.image_size=48"])
    torch.manual_seed(seed)
    model = QCSModel(config.model_config(len(CLASSES)), config.mode)
    optimizer, scheduler, scaler = build_optimization(model, config, 10, "cpu")
    return Checkpointer(tmp_path, config, CLASSES, model, optimizer, scheduler, scaler)


def test_round_trip_restores_weights_optimiser_and_run_state(tmp_path: Path) -> None:
    run = _run(tmp_path, seed=0)
    loss = run.model(torch.rand(2, 3, 3, 48, 48)).base.float().pow(2).mean()
    loss.backward()
    run.optimizer.step()
    run.scheduler.step()
    record = EpochRecord(1, 0.9, 0.5, 0.5, 0.4, (1.0,), 10.0, 2.0, 0, CLASSES, ((1, 0, 0),) * 3)
    state = RunState(epoch=1, batch=3, step=13, best=0.5, history=[record])
    state.add_step(0.25)
    run.save("last.pt", state)

    checkpoint = load_checkpoint(tmp_path / "last.pt")
    assert checkpoint["version"] == CHECKPOINT_VERSION and checkpoint["classes"] == list(CLASSES)
    assert checkpoint["history"] == [record.to_dict()]  # plain data in the file
    fresh = _run(tmp_path / "fresh", seed=1)
    restored = fresh.restore(checkpoint)
    assert restored == state and restored.step == 14 and restored.batch == 4
    for key, value in run.model.state_dict().items():
        assert torch.equal(value, fresh.model.state_dict()[key]), key
    assert str(fresh.optimizer.state_dict()) == str(run.optimizer.state_dict())
    assert fresh.scheduler.last_epoch == run.scheduler.last_epoch == 1
    # keep_checkpoints: a byte copy of last.pt named after the step
    kept = tmp_path / "checkpoints" / "step-0000014.pt"
    assert kept.read_bytes() == (tmp_path / "last.pt").read_bytes()

    model = model_from_checkpoint(checkpoint)
    assert model.mode == "dcs" and model.config.num_classes == 3
    assert all(torch.equal(v, checkpoint["model"][k]) for k, v in model.state_dict().items())
    stripped = weights_only(checkpoint, model.state_dict())
    assert "optimizer" not in stripped and "epoch_loss" not in stripped
    save_checkpoint(stripped, tmp_path / "weights.pt")
    assert load_checkpoint(tmp_path / "weights.pt")["step"] == 14


def test_epoch_records_round_trip_as_metrics_jsonl_lines(tmp_path: Path) -> None:
    confusion = np.array([[3, 1, 0], [0, 2, 0], [1, 0, 1]])
    record = EpochRecord.measured(
        epoch=2,
        train_loss=0.7,
        metrics=Metrics(CLASSES, confusion),
        held_out={"web": Metrics(CLASSES, np.eye(3, dtype=np.int64))},
        k=[1.2, 0.9, 1.0],
        images=80,
        seconds=4.0,
        skipped_images=1,
    )
    assert record.val_accuracy == pytest.approx(6 / 8) and record.images_per_second == 20
    assert record.val_sources["web"].accuracy == 1.0 and record.val_sources["web"].images == 3
    assert np.array_equal(record.metrics.confusion, confusion)
    (tmp_path / "metrics.jsonl").write_text(history_text([record, record]))
    assert read_history(tmp_path) == [record, record]
    line = json.loads(history_text([record]))
    assert set(line) >= {"epoch", "train_loss", "val_accuracy", "k", "confusion", "val_sources"}
    del line["skipped_images"], line["val_sources"]  # as the first runs wrote them
    assert EpochRecord.from_dict(line).skipped_images == 0
    with pytest.raises(TrainingError, match=r"unknown keys \['accuracy'\]"):
        EpochRecord.from_dict({**line, "accuracy": 0.5})


def test_foreign_and_future_files_are_refused(tmp_path: Path) -> None:
    torch.save({"state_dict": {}}, tmp_path / "foreign.pt")
    with pytest.raises(TrainingError, match="not a qcsfer training checkpoint"):
        load_checkpoint(tmp_path / "foreign.pt")
    save_checkpoint({"format": "qcsfer-checkpoint", "version": 99}, tmp_path / "future.pt")
    with pytest.raises(TrainingError, match="version 99 is not supported"):
        load_checkpoint(tmp_path / "future.pt")
    (tmp_path / "garbage.pt").write_bytes(b"not a torch file")
    with pytest.raises(TrainingError, match=r"not a readable qcsfer checkpoint \(not a PyTorch"):
        load_checkpoint(tmp_path / "garbage.pt")
    (tmp_path / "empty.pt").write_bytes(b"")
    with pytest.raises(TrainingError, match=r"checkpoint \(empty file \(0 bytes\)\)"):
        load_checkpoint(tmp_path / "empty.pt")


class _Payload:
    def __reduce__(self):
        return (print, ("this must never be printed",))


def test_a_checkpoint_naming_code_is_refused_in_one_line(tmp_path: Path) -> None:
    """torch's paragraph, which suggests weights_only=False, is not passed on."""
    torch.save({"format": "qcsfer-checkpoint", "payload": _Payload()}, tmp_path / "last.pt")
    with pytest.raises(TrainingError) as refused:
        load_checkpoint(tmp_path / "last.pt")
    message = str(refused.value)
    assert "GLOBAL print was not an allowed global" in message and "\n" not in message
    assert "weights_only` set to `False`" not in message and "add_safe_globals" not in message
