"""The `*_dcs_paper.yaml` recipes against the authors' `main_DCS_*.py` scripts (issue 30), and
the pair sampling they need: every anchor once per epoch, the smaller last batch kept.

The expected values are those the issue lists from the reference scripts (batch, learning rate,
epochs, resize, dropout per module); the dropout map is checked module by module on the model
each recipe builds.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from qcsfer.config import load_config
from qcsfer.data.sampling import BranchSampler, SamplerConfig
from qcsfer.engine.checkpoint import load_checkpoint
from qcsfer.engine.trainer import train
from qcsfer.models import QCSModel
from qcsfer.models.reference import FAMILIES

from .conftest import REPO
from .test_engine import synthetic_config


@dataclass(frozen=True)
class Script:
    """What one authors' DCS script trains with."""

    epochs: int
    batch: int
    lr: float
    load_size: int  # the resize before the (random or centre) 224 crop
    rotation: float
    base_dropout: float
    cross_dropout: float
    balanced: bool  # AffectNet's class-balanced sampler
    qcs_mismatches: int  # dropout modules whose rate differs from the QCS recipe's model


SCRIPTS = {
    "rafdb": Script(200, 48, 9e-6, 232, 10.0, 0.0, 0.2, False, 2),
    "ferplus": Script(150, 24, 8e-6, 234, 10.0, 0.0, 0.2, False, 0),
    "affectnet7": Script(100, 48, 9e-6, 236, 12.0, 0.0, 0.4, True, 0),
    "affectnet8": Script(50, 48, 8e-6, 224, 0.0, 0.2, 0.5, True, 8),
}


def dropout_map(model: nn.Module) -> dict[str, float]:
    return {name: m.p for name, m in model.named_modules() if isinstance(m, nn.Dropout)}


def expected_dropouts(base: float, cross: float, projection: bool) -> dict[str, float]:
    """Every dropout module of the paper-size DCS model and its rate in the reference: the
    ViTs' position, attention-projection (8-class ViT only) and MLP dropouts, none in CSA."""
    expected = {}
    for prefix, rate, depth in (("base.vit", base, 2), ("cross_vit", cross, 1)):
        expected[f"{prefix}.pos_drop"] = rate
        for block in range(depth):
            expected[f"{prefix}.blocks.{block}.attn.proj_drop"] = rate if projection else 0.0
            expected[f"{prefix}.blocks.{block}.mlp.drop"] = rate
    expected.update({f"csa.{scale}.mlp.drop": 0.0 for scale in range(3)})
    return expected


def built(recipe: Path, classes: int) -> QCSModel:
    config = load_config(recipe, [])
    with torch.device("meta"):  # the real shapes, no memory
        return QCSModel(config.model_config(classes), config.mode)


@pytest.mark.parametrize("dataset", list(SCRIPTS))
def test_dcs_recipes_reproduce_the_authors_scripts(dataset: str) -> None:
    script, family = SCRIPTS[dataset], FAMILIES[dataset]
    path = REPO / "configs" / f"{dataset}_dcs_paper.yaml"
    recipe = load_config(path, [])
    assert recipe.mode == "dcs" and recipe.model == "paper" and recipe.precision == "fp32"
    assert (recipe.epochs, recipe.batch_size, recipe.optim.lr) == (
        script.epochs,
        script.batch,
        pytest.approx(script.lr),
    )
    assert recipe.optim.name == "adam" and recipe.optim.sam and recipe.optim.sam_rho == 0.05
    assert recipe.optim.ignore_weight_decay
    assert recipe.schedule.name == "exponential" and recipe.schedule.gamma == 0.98
    assert (recipe.preprocessing.image_size, recipe.preprocessing.load_size) == (
        224,
        script.load_size,
    )
    assert recipe.augmentation.rotation == script.rotation
    sampler = recipe.sampler
    assert not sampler.drop_last and sampler.epoch_fraction == 1.0
    assert sampler.balanced == script.balanced

    classes = len(family.classes)
    model = built(path, classes)
    eight = classes == 8
    assert dropout_map(model) == expected_dropouts(
        script.base_dropout, script.cross_dropout, projection=eight
    )
    config = model.config
    assert config.bn_per_branch  # the reference's sequential BatchNorm calls
    # Apart from dropout and BatchNorm calls, the architecture of the released DCS model.
    plain = config.replace(bn_per_branch=False, base_dropout=0.0, cross_dropout=0.0)
    assert plain == family.config("dcs")

    # The module-by-module count against `mode: dcs` on the QCS recipe.
    qcs = dropout_map(built(REPO / "configs" / f"{dataset}_paper.yaml", classes))
    ours = dropout_map(model)
    assert sum(qcs[name] != ours[name] for name in ours) == script.qcs_mismatches


LABELS = np.repeat(np.arange(4), [60, 30, 20, 10])[np.random.default_rng(7).permutation(120)]


def test_pair_sampling_keeps_the_smaller_last_batch() -> None:
    """The reference's pair dataset: each image once per epoch as anchor, its positive another
    image of its class, and the DataLoader's last batch of the leftover anchors."""
    kept = BranchSampler(LABELS, 2, 16, SamplerConfig(drop_last=False), seed=5)
    dropped = BranchSampler(LABELS, 2, 16, SamplerConfig(), seed=5)
    batches = kept.epoch(3)
    assert len(kept) == len(batches) == 8 and len(dropped) == 7
    assert [b.shape for b in batches] == [(2, 16)] * 7 + [(2, 8)]
    anchor, positive = np.concatenate(batches, axis=1)
    assert sorted(anchor.tolist()) == list(range(120))
    assert (LABELS[positive] == LABELS[anchor]).all() and (positive != anchor).all()
    # The full batches are the ones drop_last gives: the option only adds the remainder.
    assert np.array_equal(np.stack(batches[:7]), dropped.epoch(3))

    exact = BranchSampler(LABELS, 2, 20, SamplerConfig(drop_last=False))
    assert isinstance(exact.epoch(0), np.ndarray) and len(exact) == 6  # nothing left over

    balanced = SamplerConfig(balanced=True, drop_last=False)  # AffectNet: with replacement
    draws = BranchSampler(LABELS, 2, 48, balanced, seed=1).epoch(0)
    assert sum(b.shape[1] for b in draws) == 120 and draws[-1].shape == (2, 24)

    with pytest.raises(ValueError, match="one process"):
        BranchSampler(LABELS, 2, 16, SamplerConfig(drop_last=False), rank=0, world_size=2)


@pytest.mark.slow
def test_a_run_trains_the_smaller_last_batch(synthetic_root: Path, tmp_path: Path) -> None:
    """120 training images in batches of 48: two full steps and one of 24 per epoch."""
    extra = {"data.limit": 120, "sampler.drop_last": False}
    config = synthetic_config(synthetic_root, mode="dcs", batch_size=48, epochs=1, **extra)
    run_dir = train(config, tmp_path / "dcs")
    assert load_checkpoint(run_dir / "last.pt")["step"] == 3
