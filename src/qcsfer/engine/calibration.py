"""Fitting the decision rule (`qcsfer.decision`) on a validation split's logits.

Both operating points come from the same logits: `dataset` keeps the training prior, `balanced`
subtracts `strength` x log(prior) with the strength that maximises balanced accuracy while
accuracy stays at or above a floor; each then gets the temperature that minimises the negative
log-likelihood (temperature scaling). Expected calibration error (top label, 15 equal-width
bins) is reported before and after.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ..decision import PRIORS, DecisionRule, OperatingPoint, softmax
from .metrics import compute_metrics


def expected_calibration_error(
    probabilities: np.ndarray, labels: np.ndarray, bins: int = 15
) -> float:
    """Mean |accuracy - confidence| over equal-width confidence bins, weighted by bin size."""
    confidence = probabilities.max(1)
    correct = probabilities.argmax(1) == labels
    edges = np.linspace(0, 1, bins + 1)
    which = np.clip(np.searchsorted(edges, confidence, side="left") - 1, 0, bins - 1)
    error = 0.0
    for b in range(bins):
        members = which == b
        if members.any():
            error += members.mean() * abs(correct[members].mean() - confidence[members].mean())
    return float(error)


def negative_log_likelihood(logits: np.ndarray, labels: np.ndarray) -> float:
    shifted = logits - logits.max(1, keepdims=True)
    log_z = np.log(np.exp(shifted).sum(1))
    return float((log_z - shifted[np.arange(len(labels)), labels]).mean())


def fit_temperature(logits: np.ndarray, labels: np.ndarray) -> float:
    """The temperature minimising NLL: golden-section search on the inverse temperature, in
    which the NLL is convex."""
    low, high = math.log(0.05), math.log(20.0)
    ratio = (math.sqrt(5) - 1) / 2

    def nll(log_beta: float) -> float:
        return negative_log_likelihood(logits * math.exp(log_beta), labels)

    a, b = high - ratio * (high - low), low + ratio * (high - low)
    fa, fb = nll(a), nll(b)
    for _ in range(60):
        if fa < fb:
            high, b, fb = b, a, fa
            a = high - ratio * (high - low)
            fa = nll(a)
        else:
            low, a, fa = a, b, fb
            b = low + ratio * (high - low)
            fb = nll(b)
    return 1.0 / math.exp((low + high) / 2)


def choose_prior_strength(
    logits: np.ndarray,
    labels: np.ndarray,
    log_prior: np.ndarray,
    classes: tuple[str, ...],
    min_accuracy: float,
    strengths: np.ndarray | None = None,
) -> float:
    """The strength with the best balanced accuracy among those keeping accuracy >= the floor
    (the strongest-accuracy one if none does)."""
    grid = np.round(np.arange(0, 2.0001, 0.05), 2) if strengths is None else strengths
    scored = []
    for s in grid:
        m = compute_metrics(labels, (logits - s * log_prior).argmax(1), classes)
        scored.append((float(s), m.accuracy, m.balanced_accuracy))
    allowed = [t for t in scored if t[1] >= min_accuracy]
    if not allowed:
        return max(scored, key=lambda t: t[1])[0]
    return max(allowed, key=lambda t: t[2])[0]


@dataclass(frozen=True)
class PointReport:
    prior: str
    prior_strength: float
    temperature: float
    accuracy: float
    balanced_accuracy: float
    macro_f1: float
    ece_before: float  # at temperature 1
    ece_after: float


def fit_decision_rule(
    logits: np.ndarray,
    labels: np.ndarray,
    classes: tuple[str, ...],
    training_prior: np.ndarray,
    min_accuracy: float = 0.85,
    default: str = "balanced",
) -> tuple[DecisionRule, dict[str, PointReport]]:
    """Fit both operating points on validation logits; returns the rule and what was measured."""
    prior = np.asarray(training_prior, dtype=np.float64)
    prior = prior / prior.sum()
    log_prior = np.log(prior)
    strengths = {
        "dataset": 0.0,
        "balanced": choose_prior_strength(logits, labels, log_prior, classes, min_accuracy),
    }
    points = {}
    for name, strength in strengths.items():
        adjusted = logits - strength * log_prior
        points[name] = OperatingPoint(strength, fit_temperature(adjusted, labels))
    rule = DecisionRule(tuple(float(p) for p in prior), points, default)
    return rule, measure_operating_points(logits, labels, classes, rule)


def measure_operating_points(
    logits: np.ndarray, labels: np.ndarray, classes: tuple[str, ...], rule: DecisionRule
) -> dict[str, PointReport]:
    """Metrics and calibration error at each operating point the rule can serve."""
    names = PRIORS if rule.training_prior is not None else ("dataset",)
    reports = {}
    for name in names:
        point = rule.point(name)
        calibrated = rule.adjust(logits, name)
        metrics = compute_metrics(labels, calibrated.argmax(1), classes)
        reports[name] = PointReport(
            name,
            point.prior_strength,
            point.temperature,
            metrics.accuracy,
            metrics.balanced_accuracy,
            metrics.macro_f1,
            expected_calibration_error(softmax(calibrated * point.temperature), labels),
            expected_calibration_error(softmax(calibrated), labels),
        )
    return reports
