"""Fitting the decision rule (`qcsfer.decision`) on a validation split's logits.

Both operating points subtract `strength` x log(training prior) from the same logits. `dataset`
takes the strength that maximises accuracy on a split with the training set's class mix (0, the
logits as trained, unless another is clearly better: a model trained on soft labels can
under-weight the prior, one trained with logit adjustment has it removed); `balanced` the
strength that maximises balanced accuracy while accuracy stays at or above a floor. Each point
then gets the temperature that minimises the negative log-likelihood (temperature scaling).
Expected calibration error (top label, 15 equal-width bins) is reported before and after.

A model meant for faces from many sources is fitted on several dev splits at once
(`fit_decision_rule_on_groups`): each strength is scored by the mean over the groups of their
accuracy and balanced accuracy, so that no one source's class mix or size decides, and no
accuracy floor applies; the temperatures are fitted on the pooled logits.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
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


STRENGTHS = np.round(np.arange(-2.0, 2.0001, 0.05), 2)  # negative: more prior than trained


def score_strengths(
    logits: np.ndarray, labels: np.ndarray, log_prior: np.ndarray, classes: tuple[str, ...]
) -> list[tuple[float, float, float]]:
    """(strength, accuracy, balanced accuracy) over the grid, nearest 0 first so that ties
    keep the smallest change to the logits as trained."""
    scored = []
    for s in sorted(STRENGTHS, key=abs):
        m = compute_metrics(labels, (logits - s * log_prior).argmax(1), classes)
        scored.append((float(s), m.accuracy, m.balanced_accuracy))
    return scored


DATASET_MARGIN = 0.001  # a dataset strength other than 0 must gain 0.1 points of accuracy


def choose_strengths(
    scored: list[tuple[float, float, float]], min_accuracy: float
) -> dict[str, float]:
    """`dataset`: the best accuracy (0, the logits as trained, unless another strength beats it
    by DATASET_MARGIN: one face more of a few thousand is noise). `balanced`: the best balanced
    accuracy among strengths at least the dataset one (less prior, never more) keeping
    accuracy >= the floor; the dataset point where none does."""
    as_trained = next(t for t in scored if t[0] == 0)
    dataset = max(scored, key=lambda t: t[1])
    if dataset[1] < as_trained[1] + DATASET_MARGIN:
        dataset = as_trained
    allowed = [t for t in scored if t[0] >= dataset[0] and t[1] >= min_accuracy] or [dataset]
    return {"dataset": dataset[0], "balanced": max(allowed, key=lambda t: t[2])[0]}


def describe_points(
    logits: np.ndarray,
    labels: np.ndarray,
    classes: tuple[str, ...],
    log_prior: np.ndarray,
    min_accuracy: float = 0.85,
) -> str:
    """The operating points `fit_decision_rule` would choose on these logits, in one line: how
    mixes and averages are compared, including those of logit-adjusted runs."""
    scored = score_strengths(logits, labels, log_prior, classes)
    measured = {s: (accuracy, balanced) for s, accuracy, balanced in scored}
    points = []
    for name, s in choose_strengths(scored, min_accuracy).items():
        accuracy, balanced = measured[s]
        points.append(f"{name} (strength {s:+.2f}) {100 * accuracy:.2f}% / {100 * balanced:.2f}%")
    return "; ".join(points) + " (accuracy / balanced accuracy)"


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
    strengths = choose_strengths(score_strengths(logits, labels, log_prior, classes), min_accuracy)
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


@dataclass(frozen=True)
class Group:
    """One source's dev faces in a fit across sources."""

    name: str
    logits: np.ndarray  # N x K (rows of faces not found are ignored)
    labels: np.ndarray  # int N
    found: np.ndarray  # bool N: a face the detector missed is wrong at every strength
    counted: tuple[int, ...]  # the classes its balanced accuracy averages over


def score_group(group: Group, strength: float, log_prior: np.ndarray) -> tuple[float, float]:
    """(accuracy, balanced accuracy over `counted`) of one group at one prior strength."""
    predicted = np.full(len(group.labels), -1, dtype=np.int64)
    if group.found.any():
        predicted[group.found] = (group.logits[group.found] - strength * log_prior).argmax(1)
    correct = predicted == group.labels
    recalls = [correct[group.labels == c].mean() for c in group.counted]
    accuracy = float(correct.mean()) if len(correct) else 0.0
    return accuracy, float(np.mean(recalls)) if recalls else 0.0


def score_strengths_by_group(
    groups: Sequence[Group], log_prior: np.ndarray
) -> list[tuple[float, float, float]]:
    """(strength, mean accuracy, mean balanced accuracy over the groups) over the grid, nearest
    0 first: the form `choose_strengths` takes."""
    scored = []
    for s in sorted(STRENGTHS, key=abs):
        accuracy, balanced = np.mean([score_group(g, float(s), log_prior) for g in groups], 0)
        scored.append((float(s), float(accuracy), float(balanced)))
    return scored


def fit_decision_rule_on_groups(
    groups: Sequence[Group],
    classes: tuple[str, ...],
    training_prior: np.ndarray,
    default: str = "balanced",
) -> tuple[DecisionRule, dict[str, PointReport], dict[str, dict[str, tuple[float, float]]]]:
    """Both operating points fitted on several dev splits at once: `dataset` the best mean
    accuracy (0 unless another strength gains DATASET_MARGIN), `balanced` the best mean
    balanced accuracy (no accuracy floor; never more prior than `dataset`), each with the
    temperature fitted on the pooled logits of the faces found. Returns the rule, what it
    measures on the pooled faces, and each point's (accuracy, balanced accuracy) per group."""
    prior = np.asarray(training_prior, dtype=np.float64)
    prior = prior / prior.sum()
    log_prior = np.log(prior)
    strengths = choose_strengths(score_strengths_by_group(groups, log_prior), min_accuracy=0.0)
    logits = np.concatenate([g.logits[g.found] for g in groups])
    labels = np.concatenate([g.labels[g.found] for g in groups])
    points = {
        name: OperatingPoint(s, fit_temperature(logits - s * log_prior, labels))
        for name, s in strengths.items()
    }
    rule = DecisionRule(tuple(float(p) for p in prior), points, default)
    per_group = {
        name: {g.name: score_group(g, s, log_prior) for g in groups}
        for name, s in strengths.items()
    }
    return rule, measure_operating_points(logits, labels, classes, rule), per_group
