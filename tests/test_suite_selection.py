"""Selection and calibration on the generalization suite (tools/select_on_suite.py,
tools/calibrate.py --suite, `fit_decision_rule_on_groups`), on the generated four-source tree of
test_generalization.py with constant-logit models, so every score can be written down."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from qcsfer.card import read_card
from qcsfer.config import TrainConfig, to_dict
from qcsfer.engine.calibration import Group, fit_decision_rule, fit_decision_rule_on_groups
from qcsfer.engine.checkpoint import CHECKPOINT_FORMAT, CHECKPOINT_VERSION, save_checkpoint
from qcsfer.models.qcs import QCSModel
from qcsfer.models.weights import load_weights
from qcsfer.preprocessing import Preprocessing

from .conftest import REPO
from .test_generalization import (
    BIAS,
    CLASSES,
    GRAY_48,
    PRIOR,
    StubDetector,
    constant_model,
    write_tree,
)

CONFIG = TrainConfig(
    model="tiny", preprocessing=Preprocessing(**GRAY_48, mean=(0.5,) * 3, std=(0.25,) * 3)
)
NEUTRAL = [3.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0]  # neutral at both points (see below)


@pytest.fixture()
def tools(monkeypatch: pytest.MonkeyPatch):
    """The two tools, with the training prior of every recorded config fixed to PRIOR."""
    monkeypatch.syspath_prepend(str(REPO / "tools"))
    monkeypatch.syspath_prepend(str(REPO / "benchmarks"))
    import calibrate
    import select_on_suite

    for module in (calibrate, select_on_suite):
        monkeypatch.setattr(module, "training_prior", lambda config: np.array(PRIOR))
    return select_on_suite, calibrate


def write_checkpoint(path: Path, bias: list[float], step: int) -> None:
    """A training checkpoint of a QCS model whose logits are `bias` whatever the face."""
    torch.manual_seed(0)
    model = QCSModel(CONFIG.model_config(len(CLASSES)), CONFIG.mode)
    with torch.no_grad():
        model.base.vit.head.weight.zero_()
        model.base.vit.head.bias.copy_(torch.tensor(bias))
    checkpoint = {
        "format": CHECKPOINT_FORMAT,
        "version": CHECKPOINT_VERSION,
        "config": to_dict(CONFIG),
        "classes": CLASSES,
        "model": model.state_dict(),
        "step": step,
        "epoch": 0,
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    save_checkpoint(checkpoint, path)


def test_group_fit_maximises_the_mean_of_the_groups_not_the_pooled_score() -> None:
    """Two classes, prior (0.8, 0.2): a face of margin k x log 4 (class 0 over 1) reads class 0
    below strength k. Group a (five times larger) reads perfectly near 0.5, group b near 1.5:
    the mean of the two balanced accuracies is best at 1.5 (0.79 against 0.75 at 0.5), the
    pooled faces' at 0.5. A face group b's detector missed is wrong at every strength."""
    log4 = np.log(4.0)

    def group(name: str, k0: list[float], k1: list[float], copies: int, missing: int = 0) -> Group:
        margins = np.array(k0 * copies + k1 * copies + [0.0] * missing) * log4
        logits = np.stack([margins, np.zeros_like(margins)], 1)
        labels = np.array([0] * 2 * copies + [1] * 2 * copies + [1] * missing)
        found = np.arange(len(labels)) < 4 * copies
        return Group(name, logits, labels, found, (0, 1))

    groups = [
        group("a", [0.525, 2.0], [0.275, 0.475], copies=5),
        group("b", [1.525, 2.0], [1.275, 1.475], copies=1, missing=1),
    ]
    classes, prior = ("zero", "one"), np.array([0.8, 0.2])
    rule, reports, per_group = fit_decision_rule_on_groups(groups, classes, prior)
    assert rule.point("balanced").prior_strength == pytest.approx(1.5)
    assert per_group["balanced"]["a"] == pytest.approx((0.75, 0.75))
    assert per_group["balanced"]["b"] == pytest.approx((0.8, 2 / 3 / 2 + 1 / 2))  # 1 of 3 missed
    assert rule.point("dataset").prior_strength == pytest.approx(1.5)  # mean accuracy too
    assert reports["balanced"].accuracy == pytest.approx((15 + 4) / 24)  # the pooled faces found
    pooled = np.concatenate([g.logits[g.found] for g in groups])
    labels = np.concatenate([g.labels[g.found] for g in groups])
    alone, _ = fit_decision_rule(pooled, labels, classes, prior, min_accuracy=0.0)
    assert alone.point("balanced").prior_strength == pytest.approx(0.5)


def test_selection_ranks_checkpoints_and_exports_the_winner(tools, tmp_path: Path) -> None:
    """BIAS reads happiness at `dataset` and surprise at `balanced` (suite 0.396 / 0.167, as in
    test_generalization; 0.396 is its best at any strength); NEUTRAL reads neutral at both and at
    every strength where it is best (0.25: half of FERPlus and lfw-imfdb)."""
    select_on_suite, _ = tools
    datasets = write_tree(tmp_path / "datasets")
    run = tmp_path / "runs" / "trial"
    write_checkpoint(run / "checkpoints" / "step-0000010.pt", BIAS, 10)
    write_checkpoint(run / "checkpoints" / "step-0000020.pt", NEUTRAL, 20)
    write_checkpoint(run / "last.pt", NEUTRAL, 20)  # the same step as a kept one: left out
    detector = StubDetector()
    common = [str(run), "--datasets", str(datasets), "--min-support", "3"]
    out = tmp_path / "out"
    argv = [*common, "--rank-by", "balanced", "--out", str(out)]
    by_balanced = select_on_suite.main(argv, detector=detector)
    calls = len(detector.shapes)
    assert calls == 13  # tcce dev's photos detected once for both checkpoints
    ranked = [row["candidate"] for row in by_balanced["candidates"]]
    assert ranked == ["step-0000020", "step-0000010"]
    neutral, constant = by_balanced["candidates"]
    assert neutral["suite"] == pytest.approx({"dataset": 0.25, "balanced": 0.25})
    assert constant["suite"]["dataset"] == pytest.approx((1 / 2 + 1 / 3 + 0.25 + 1 / 2) / 4)
    assert constant["suite"]["balanced"] == pytest.approx((0 + 1 / 3 + 1 / 3 + 0) / 4)
    assert constant["fitted"]["suite_score"] == pytest.approx(constant["suite"]["dataset"])
    assert neutral["balanced_accuracy"]["lfw-imfdb-dev"] == {"dataset": 0.5, "balanced": 0.5}
    assert by_balanced["operating_points"] == {"dataset": 0.0, "balanced": 1.0}
    table = (out / "selection-trial.md").read_text()
    assert "| 1 | step-0000020 | 20 | 25.00 | 25.00 |" in table
    assert json.loads((out / "selection-trial.json").read_text())["rank_by"] == "balanced"
    assert neutral["fitted"]["suite_score"] == pytest.approx(0.25)

    exported = tmp_path / "winner.safetensors"
    argv = [*common, "--out", str(out), "--export", str(exported)]  # ranked by `fitted`
    by_fitted = select_on_suite.main(argv, detector=detector)
    assert [row["candidate"] for row in by_fitted["candidates"]] == ranked[::-1]
    model, card = load_weights(exported)
    assert isinstance(model, QCSModel) and card.provenance["step"] == 10
    assert card.provenance["selected"]["candidates_compared"] == 2
    assert card.decision.point("balanced").prior_strength == 1.0
    assert card.provenance["config"]["model"] == "tiny"


def test_every_keeps_the_checkpoints_at_multiples_of_its_steps(tools, tmp_path: Path) -> None:
    select_on_suite, _ = tools
    run = tmp_path / "run"
    for step in (5, 10, 15, 20):
        write_checkpoint(run / "checkpoints" / f"step-{step:07d}.pt", NEUTRAL, step)
    write_checkpoint(run / "last.pt", NEUTRAL, 23)
    names = [c.name for c in select_on_suite.candidates(run, every=10)]
    assert names == ["step-0000010", "step-0000020", "last"]
    assert len(select_on_suite.candidates(run)) == 5
    with pytest.raises(SystemExit):
        select_on_suite.parse_args([str(run), "--every", "0"])


def test_calibrate_on_the_suite_records_what_it_was_fitted_on(tools, tmp_path: Path) -> None:
    """The constant model reads happiness below strength 0.5 and surprise above: both points
    stay at 0 (the nearest to the logits as trained among the best), and the provenance names
    the sources, their faces and each point's per-source scores."""
    _, calibrate = tools
    datasets = write_tree(tmp_path / "datasets")
    weights = constant_model(tmp_path / "constant.safetensors", {"config": to_dict(CONFIG)})
    argv = [str(weights), "--suite", "--datasets", str(datasets), "--min-support", "3"]
    calibrate.main(argv, detector=StubDetector())

    card = read_card(weights)
    fitted = card.provenance["calibration"]
    assert set(fitted["sources"]) == {
        "ferplus-valid",
        "affectnet-web-dev",
        "tcce-dev-detector",
        "lfw-imfdb-dev",
    }
    assert fitted["sources"]["tcce-dev-detector"] == {
        "images": 13,
        "faces_found": 12,
        "balanced_over": ["happiness", "surprise", "anger"],
    }
    balanced = fitted["operating_points"]["balanced"]
    assert balanced["prior_strength"] == 0.0
    assert balanced["suite_score"] == pytest.approx((1 / 2 + 1 / 3 + 0.25 + 1 / 2) / 4)
    assert balanced["per_source"]["tcce-dev-detector"]["balanced_accuracy"] == pytest.approx(0.25)
    assert fitted["operating_points"]["dataset"]["prior_strength"] == 0.0
    assert card.decision.default == "balanced"
    assert card.decision.training_prior == pytest.approx(PRIOR)
    assert card.metrics["valid_flip"]["accuracy"] == pytest.approx(3 / 9)
    assert card.metrics["suite_balanced"]["suite_score"] == pytest.approx(balanced["suite_score"])


def test_calibrate_wants_one_of_data_or_suite(tools) -> None:
    _, calibrate = tools
    with pytest.raises(SystemExit):
        calibrate.parse_args(["w.safetensors"])
    with pytest.raises(SystemExit):
        calibrate.parse_args(["w.safetensors", "--suite", "--data", "ferplus:x"])
