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
from qcsfer.data.prior import class_prior, training_prior
from qcsfer.data.records import LabeledImages
from qcsfer.data.sampling import SamplerConfig
from qcsfer.data.splits import Split, load_splits
from qcsfer.engine.distributed import Distributed
from qcsfer.engine.evaluate import evaluate_split
from qcsfer.engine.logit_adjustment import logit_adjusted, prior_offset
from qcsfer.engine.trainer import train
from qcsfer.models import QCSModel, get_config
from qcsfer.models.qcs import BranchLogits, branch_loss
from qcsfer.pretrained import load_model

from .test_engine import history, synthetic_config, tiny_config

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


def test_training_prior_of_a_config_is_the_prior_training_uses(synthetic_root: Path) -> None:
    """Read from labels only (calibration) or from the loaded split (training): the same
    records, with a carved validation split and a limit."""
    config = synthetic_config(synthetic_root, **{"data.val_split": None, "data.limit": 150})
    train_split, _, _ = load_splits(config, None)
    from_split = class_prior(train_split.records, train_split.weights)
    assert len(train_split.records) == 150
    assert np.allclose(training_prior(config), from_split)
    assert not np.allclose(from_split, 0.25)  # the limit made it uneven: the test can fail


@pytest.mark.slow
def test_a_run_trains_with_logit_adjustment_and_validates_with_the_prior_back(
    ferplus_root: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """FERPlus's uneven prior: the loss differs from plain cross-entropy's, and the recorded
    validation accuracy is that of the logits plus tau x log(prior)."""
    extra = {"mode": "baseline", "epochs": 1}
    config = tiny_config(ferplus_root, logit_adjustment=1.0, **extra)
    with caplog.at_level(logging.INFO, logger="qcsfer.train"):
        run_dir = train(config, tmp_path / "la")
    assert "logit adjustment, tau 1" in caplog.text
    plain = train(tiny_config(ferplus_root, **extra), tmp_path / "plain")
    adjusted_loss, plain_loss = (history(r)[-1]["train_loss"] for r in (run_dir, plain))
    assert np.isfinite(adjusted_loss) and abs(adjusted_loss - plain_loss) > 0.01

    model, _ = load_model(run_dir)
    _, val_split, _ = load_splits(config, None)
    offset = torch.log(torch.as_tensor(training_prior(config), dtype=torch.float32))
    cpu, dd = torch.device("cpu"), Distributed()
    with_prior = evaluate_split(model, val_split, config, cpu, dd, offset).accuracy
    assert history(run_dir)[-1]["val_accuracy"] == pytest.approx(with_prior)


def test_config_refuses_bad_logit_adjustment() -> None:
    for tau in (-1.0, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="logit_adjustment must be >= 0"):
            TrainConfig(logit_adjustment=tau)
    with pytest.raises(ValueError, match=r"sampler\.balanced"):
        TrainConfig(logit_adjustment=1.0, sampler=SamplerConfig(balanced=True))
