"""The decision rule (training prior, operating points, temperature) and its fitting."""

from __future__ import annotations

import numpy as np
import pytest

from qcsfer.decision import DecisionRule, OperatingPoint, softmax
from qcsfer.engine.calibration import (
    choose_strengths,
    expected_calibration_error,
    fit_decision_rule,
    fit_temperature,
    measure_operating_points,
    score_strengths,
)
from qcsfer.engine.metrics import compute_metrics

CLASSES = ("common", "middle", "rare")


def imbalanced_logits(
    n: int = 6000, seed: int = 0, skewed_labels: bool = False
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Logits of a classifier that learned a skewed prior (the rare class under-predicted),
    2 / 1.6 = 1.25 times over-confident; labels balanced or following the prior."""
    rng = np.random.default_rng(seed)
    prior = np.array([0.7, 0.25, 0.05])
    labels = rng.choice(3, size=n, p=prior if skewed_labels else [1 / 3, 1 / 3, 1 / 3])
    evidence = rng.normal(0, 1.0, (n, 3))
    evidence[np.arange(n), labels] += 1.6
    return 2.0 * (evidence + np.log(prior)), labels, prior  # over-confident by 2x


def test_identity_rule_and_unknown_prior() -> None:
    logits = np.array([[1.0, 2.0, 0.5]])
    rule = DecisionRule()
    assert np.allclose(rule.probabilities(logits), softmax(logits))
    with pytest.raises(ValueError, match="training prior"):
        rule.adjust(logits, "balanced")
    with pytest.raises(ValueError, match="unknown prior"):
        rule.adjust(logits, "uniform")


def test_rule_round_trips_through_json_data() -> None:
    rule = DecisionRule(
        (0.5, 0.3, 0.2),
        {"dataset": OperatingPoint(0.0, 0.8), "balanced": OperatingPoint(0.6, 0.9)},
        "balanced",
    )
    again = DecisionRule.from_dict(rule.to_dict())
    assert again == rule
    logits = np.array([[1.0, 1.0, 1.0]])
    adjusted = again.adjust(logits)  # the default point: balanced
    expected = (1.0 - 0.6 * np.log([0.5, 0.3, 0.2])) / 0.9
    assert np.allclose(adjusted, expected)
    assert adjusted.argmax() == 2  # equal evidence -> the rarest class wins after correction


def test_temperature_fixes_overconfidence() -> None:
    logits, labels, prior = imbalanced_logits()
    logits = logits - 2.0 * np.log(prior)  # no prior shift: only the 2x over-confidence
    temperature = fit_temperature(logits, labels)
    assert 1.1 < temperature < 1.4  # the log-likelihood ratio is 1.6 x evidence; logits 2 x
    before = expected_calibration_error(softmax(logits), labels)
    after = expected_calibration_error(softmax(logits / temperature), labels)
    assert after < before / 2 and after < 0.03


def test_ece_of_a_perfectly_calibrated_predictor_is_small() -> None:
    rng = np.random.default_rng(1)
    probabilities = rng.dirichlet([1, 1, 1], size=20000)
    labels = np.array([rng.choice(3, p=p) for p in probabilities])
    assert expected_calibration_error(probabilities, labels) < 0.02
    wrong = np.zeros_like(probabilities)
    wrong[np.arange(len(labels)), (labels + 1) % 3] = 1.0
    assert expected_calibration_error(wrong, labels) == pytest.approx(1.0)


def test_balanced_point_raises_balanced_accuracy_within_the_accuracy_floor() -> None:
    logits, labels, prior = imbalanced_logits()
    rule, reports = fit_decision_rule(logits, labels, CLASSES, prior, min_accuracy=0.0)
    balanced = reports["balanced"]
    assert balanced.prior_strength > 1.5  # the learned log prior enters the logits x2
    assert (
        balanced.balanced_accuracy
        > compute_metrics(labels, logits.argmax(1), CLASSES).balanced_accuracy + 0.05
    )
    assert balanced.ece_after < 0.03
    assert all(r.ece_after < r.ece_before for r in reports.values())
    # Where the labels follow the training prior, correcting costs accuracy: a floor limits it.
    skewed, skewed_labels, _ = imbalanced_logits(skewed_labels=True)
    _, free = fit_decision_rule(skewed, skewed_labels, CLASSES, prior, min_accuracy=0.0)
    floor = free["dataset"].accuracy - 0.02
    _, strict = fit_decision_rule(skewed, skewed_labels, CLASSES, prior, min_accuracy=floor)
    assert strict["balanced"].accuracy >= floor
    assert strict["balanced"].prior_strength < free["balanced"].prior_strength
    assert free["balanced"].accuracy < floor
    again = measure_operating_points(logits, labels, CLASSES, rule)
    assert again == reports


def test_dataset_point_keeps_a_learned_prior_and_restores_a_removed_one() -> None:
    """Labels with the training mix (Bayes: 2 x evidence + 1.25 x log prior in these logits'
    units): logits that learned the prior 2x too strongly lose some of it (strength near 0.75);
    logits trained with logit adjustment (prior removed) get it back (near -1.25)."""
    logits, labels, prior = imbalanced_logits(skewed_labels=True)
    _, learned = fit_decision_rule(logits, labels, CLASSES, prior)
    assert 0.4 <= learned["dataset"].prior_strength <= 1.2
    adjusted = logits - 2.0 * np.log(prior)  # the prior removed, as logit adjustment trains
    _, removed = fit_decision_rule(adjusted, labels, CLASSES, prior)
    assert -1.6 <= removed["dataset"].prior_strength <= -0.9  # Bayes: -2 / 1.6 = -1.25
    raw = compute_metrics(labels, adjusted.argmax(1), CLASSES).accuracy
    assert removed["dataset"].accuracy > raw + 0.05


def test_balanced_point_never_adds_prior_and_dataset_keeps_zero_without_a_clear_gain() -> None:
    logits, labels, prior = imbalanced_logits(skewed_labels=True)
    log_prior = np.log(prior)
    scored = score_strengths(logits, labels, log_prior, CLASSES)
    by_strength = {s: a for s, a, _ in scored}
    # an impossible floor: balanced falls back to the dataset point, never to more prior
    chosen = choose_strengths(scored, min_accuracy=1.0)
    assert chosen["balanced"] == chosen["dataset"]
    # a gain below the margin keeps the logits as trained
    tiny_gain = [(s, by_strength[0.0] + (0.0005 if s == -0.3 else 0.0), b) for s, _, b in scored]
    assert choose_strengths(tiny_gain, 0.0)["dataset"] == 0.0
    clear_gain = [(s, by_strength[0.0] + (0.005 if s == -0.3 else 0.0), b) for s, _, b in scored]
    assert choose_strengths(clear_gain, 0.0)["dataset"] == -0.3
    with pytest.raises(ValueError, match="needs the training prior"):
        DecisionRule(None, {"dataset": OperatingPoint(-1.0)})


def test_recognizer_serves_both_operating_points(tmp_path) -> None:
    """A model carrying a decision rule: probabilities follow the chosen prior; the default is
    the model's; a model without a training prior refuses prior=balanced with a message."""
    import json
    import shutil
    from pathlib import Path

    from qcsfer import ExpressionRecognizer
    from qcsfer.pretrained import resolve_weights

    shipped = resolve_weights("ferplus")
    metadata = json.loads(shipped.with_suffix(".json").read_text())
    metadata.pop("decision", None)
    metadata.pop("meaning_sha256", None)  # the cards below are edited: as if from before digests

    def model_file(name: str, decision: DecisionRule | None) -> Path:
        weights = tmp_path / f"{name}.safetensors"
        shutil.copyfile(shipped, weights)
        card = dict(metadata, **({"decision": decision.to_dict()} if decision else {}))
        weights.with_suffix(".json").write_text(json.dumps(card))
        return weights

    prior = [0.34, 0.27, 0.12, 0.14, 0.09, 0.01, 0.02, 0.01]
    rule = DecisionRule(
        tuple(prior),
        {"dataset": OperatingPoint(0.0, 0.8), "balanced": OperatingPoint(0.7, 0.9)},
        "balanced",
    )
    weights, without_rule = model_file("with", rule), model_file("without", None)

    face = np.full((48, 48, 3), 128, dtype=np.uint8)
    face[14:18, 12:20] = face[14:18, 28:36] = 40  # eyes
    face[32:35, 16:32] = 60  # mouth
    plain = ExpressionRecognizer(without_rule, detect=False)
    assert plain.prior == "dataset"
    raw = np.log(list(plain(face)[0].probabilities.values()))
    for name in ("dataset", "balanced"):
        recognizer = ExpressionRecognizer(weights, detect=False, prior=name)
        got = list(recognizer(face)[0].probabilities.values())
        assert np.allclose(got, rule.probabilities(raw[None], name)[0], atol=1e-5)
    assert ExpressionRecognizer(weights, detect=False).prior == "balanced"
    with pytest.raises(ValueError, match="training prior"):
        ExpressionRecognizer(without_rule, detect=False, prior="balanced")
