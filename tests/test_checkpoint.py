"""The training checkpoint format: a round trip restores a run exactly; foreign files refused."""

from __future__ import annotations

from pathlib import Path

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
    state = RunState(epoch=1, batch=3, step=13, best=0.5, history=[{"val_accuracy": 0.5}])
    state.add_step(0.25)
    run.save("last.pt", state)

    checkpoint = load_checkpoint(tmp_path / "last.pt")
    assert checkpoint["version"] == CHECKPOINT_VERSION and checkpoint["classes"] == list(CLASSES)
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
