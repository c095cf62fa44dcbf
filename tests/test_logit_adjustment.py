"""The prior-aware objective: the training class prior, the logit-adjusted loss, validation
at the dataset operating point, and a run that trains with it."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
import torch

from qcsfer.config import TrainConfig
from qcsfer.data.images import MemoryImages
from qcsfer.data.prior import class_prior
from qcsfer.data.records import LabeledImages
from qcsfer.data.splits import Split
from qcsfer.engine.distributed import Distributed
from qcsfer.engine.evaluate import evaluate_split
from qcsfer.engine.logit_adjustment import logit_adjusted, prior_offset
from qcsfer.engine.trainer import train
from qcsfer.models import QCSModel, get_config
from qcsfer.models.qcs import BranchLogits, branch_loss

from .test_engine import history, synthetic_config

CLASSES = ("a", "b", "c")


def records(labels: list[int], soft: np.ndarray | None = None) -> LabeledImages:
    paths = tuple(Path(f"{i}.png") for i in range(len(labels)))
    return LabeledImages("toy", "train", CLASSES, paths, np.array(labels), soft)


def test_class_prior_counts_soft_labels_and_sampling_weights() -> None:
    assert np.allclose(class_prior(records([0, 0, 0, 1])), [0.75, 0.25, 0.0])
    soft = np.array([[0.5, 0.5, 0.0], [0.0, 0.0, 1.0]], dtype=np.float32)
    assert np.allclose(class_prior(records([0, 2], soft)), [0.25, 0.25, 0.5])
    weighted = class_prior(records([0, 1]), weights=np.array([3.0, 1.0]))
    assert np.allclose(weighted, [0.75, 0.25, 0.0])


def test_adjusted_loss_is_the_loss_of_shifted_logits() -> None:
    torch.manual_seed(0)
    logits = BranchLogits(torch.randn(4, 5, 3), torch.randn(4, 5, 3))
    targets = torch.randint(0, 3, (4, 5))
    offset = prior_offset(records([0, 0, 0, 1, 2]), None, tau=1.0, announce=False)
    assert torch.allclose(offset, torch.log(torch.tensor([0.6, 0.2, 0.2])))
    shifted = BranchLogits(logits.base + offset, logits.cross + offset)
    adjusted = logit_adjusted(branch_loss, offset)(logits, targets)
    assert torch.allclose(adjusted, branch_loss(shifted, targets))
    assert not torch.allclose(adjusted, branch_loss(logits, targets))
    baseline = BranchLogits(logits.base, None)
    assert torch.allclose(
        logit_adjusted(branch_loss, offset)(baseline, targets),
        branch_loss(BranchLogits(logits.base + offset, None), targets),
    )
    assert prior_offset(records([0, 1, 2]), None, tau=0.0) is None  # plain cross-entropy


def test_validation_adds_the_offset_before_the_argmax() -> None:
    labels = [0] * 6 + [1] * 3 + [2] * 3
    split = Split(records(labels), MemoryImages(torch.randint(0, 255, (12, 1, 48, 48))))
    config = TrainConfig(model="tiny", eval_flip=False, device="cpu")
    base = QCSModel(get_config("tiny", num_classes=3), "baseline").base.eval()
    dd = Distributed()
    forced = torch.tensor([0.0, 1e4, 0.0])  # every prediction becomes class 1
    metrics = evaluate_split(base, split, config, torch.device("cpu"), dd, forced)
    assert metrics.accuracy == pytest.approx(3 / 12)


def test_a_run_trains_with_logit_adjustment(
    synthetic_root: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    config = synthetic_config(synthetic_root, mode="qcs", logit_adjustment=1.0, epochs=1)
    with caplog.at_level(logging.INFO, logger="qcsfer.train"):
        run_dir = train(config, tmp_path / "la")
    assert "logit adjustment, tau 1" in caplog.text
    assert np.isfinite(history(run_dir)[-1]["train_loss"])
    with pytest.raises(ValueError, match="logit_adjustment must be >= 0"):
        TrainConfig(logit_adjustment=-1.0)
