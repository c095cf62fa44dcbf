"""Scores of the generalization suite (`generalization.py`): per source and operating point,
accuracy, balanced accuracy over the classes with enough faces, per-class recall; the suite
score; the markdown table.

A face the detector did not find has no prediction (-1) and counts as wrong: a model behind a
detector that misses posed faces reads nothing on them, and the score should say so.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from qcsfer.decision import DecisionRule
from qcsfer.engine.calibration import Group

NO_PREDICTION = -1


@dataclass(frozen=True)
class SourceReading:
    """A model's raw logits on one source's faces, before any operating point is applied."""

    key: str  # e.g. "tcce-dev-detector"
    title: str  # how the table names it
    labels: np.ndarray  # int64 N, in the model's classes
    logits: np.ndarray  # float32 N x K (rows of faces not found are ignored)
    found: np.ndarray  # bool N: False where the detector found no face
    notes: dict[str, int]  # counts: unreadable, classes the model lacks, no face, ...


def score(
    labels: np.ndarray, predicted: np.ndarray, classes: Sequence[str], min_support: int
) -> dict:
    """Accuracy over all faces, balanced accuracy over classes with >= min_support faces, and
    each present class's recall and support."""
    labels, predicted = np.asarray(labels), np.asarray(predicted)
    correct = predicted == labels
    per_class = {}
    for c, name in enumerate(classes):
        members = labels == c
        support = int(members.sum())
        if support:
            per_class[name] = {"recall": float(correct[members].mean()), "support": support}
    counted = [name for name, row in per_class.items() if row["support"] >= min_support]
    balanced = float(np.mean([per_class[n]["recall"] for n in counted])) if counted else 0.0
    return {
        "images": len(labels),
        "accuracy": float(correct.mean()) if len(labels) else 0.0,
        "balanced_accuracy": balanced,
        "balanced_over": counted,
        "no_prediction": int((predicted == NO_PREDICTION).sum()),
        "per_class": per_class,
    }


def available_points(rule: DecisionRule) -> list[str]:
    """The operating points the model can be read at (`balanced` needs a training prior)."""
    return ["dataset"] if rule.training_prior is None else ["dataset", "balanced"]


def predictions(reading: SourceReading, rule: DecisionRule, point: str) -> np.ndarray:
    """Class ids at the operating point; NO_PREDICTION where no face was found."""
    predicted = np.full(len(reading.labels), NO_PREDICTION, dtype=np.int64)
    if reading.found.any():
        predicted[reading.found] = rule.adjust(reading.logits[reading.found], point).argmax(1)
    return predicted


def score_readings(
    readings: Sequence[SourceReading],
    rule: DecisionRule,
    classes: Sequence[str],
    min_support: int,
    suite_keys: Sequence[str],
) -> tuple[dict, dict]:
    """Per-source results at every available point, and the suite score per point (the mean
    balanced accuracy of the sources in `suite_keys`)."""
    points = available_points(rule)
    sources = {}
    for r in readings:
        sources[r.key] = {
            "title": r.title,
            "notes": dict(r.notes),
            "points": {
                p: score(r.labels, predictions(r, rule, p), classes, min_support) for p in points
            },
        }
    suite = {
        p: float(np.mean([sources[k]["points"][p]["balanced_accuracy"] for k in suite_keys]))
        for p in points
    }
    return sources, suite


def suite_groups(
    readings: Sequence[SourceReading], min_support: int, suite_keys: Sequence[str]
) -> list[Group]:
    """The suite's sources as calibration groups, scored as `score` scores them: a face not
    found is wrong, balanced accuracy over the classes with at least `min_support` faces."""
    groups = []
    for r in (r for r in readings if r.key in suite_keys):
        counts = np.bincount(r.labels, minlength=r.logits.shape[1])
        counted = tuple(int(c) for c in np.flatnonzero(counts >= min_support))
        groups.append(Group(r.key, r.logits, r.labels, r.found, counted))
    return groups


def _pct(value: float) -> str:
    return f"{100 * value:.1f}"


def markdown(result: dict) -> str:
    """The summary table (both points side by side), then per-class recall."""
    points = list(result["suite"])
    sources = result["sources"]
    head = " | ".join(f"{p}: accuracy | {p}: balanced" for p in points)
    lines = [
        f"Generalization suite of `{result['model']}` (detector {result['detector']}, balanced "
        f"accuracy over classes with at least {result['min_support']} faces; %). "
        + _points_line(result),
        "",
        f"| source | faces | {head} |",
        "|---|---|" + "---|---|" * len(points),
    ]
    for key, source in sources.items():
        at = source["points"]
        cells = " | ".join(
            f"{_pct(at[p]['accuracy'])} | {_pct(at[p]['balanced_accuracy'])}" for p in points
        )
        marker = "" if key in result["suite_sources"] else " (comparison)"
        images = at[points[0]]["images"]
        lines.append(f"| {source['title']}{marker} | {images} | {cells} |")
    suite = " | ".join(f" | **{_pct(result['suite'][p])}**" for p in points)
    lines.append(
        f"| **suite score** (mean balanced, {len(result['suite_sources'])} sources) | |{suite} |"
    )
    classes = result["classes"]
    lines += ["", f"| per-class recall | point | {' | '.join(classes)} |"]
    lines.append("|---|---|" + "---|" * len(classes))
    for source in sources.values():
        for p in points:
            row = source["points"][p]["per_class"]
            cells = [
                "" if c not in row else _recall_cell(row[c], result["min_support"]) for c in classes
            ]
            lines.append(f"| {source['title']} | {p} | {' | '.join(cells)} |")
    lines += [
        "",
        "Recall cells: % (faces); classes in italics have fewer faces than the "
        "balanced accuracy counts. Notes per source:",
    ]
    for source in sources.values():
        notes = ", ".join(f"{reason}: {n}" for reason, n in source["notes"].items() if n)
        lines.append(f"- {source['title']}: {notes or 'nothing left out'}")
    lines += [
        "",
        f"Command: `{result['command']}`; {result['date']}; {result['machine']}; "
        f"{result['seconds']} s.",
    ]
    return "\n".join(lines) + "\n"


def _points_line(result: dict) -> str:
    """The operating points as read: prior strength, and which is the model's default."""
    parts = []
    for name, point in result["operating_points"].items():
        default = ", the model's default" if name == result["default_point"] else ""
        parts.append(f"`{name}` (prior strength {point['prior_strength']:+.2f}{default})")
    return "Operating points: " + "; ".join(parts) + "."


def _recall_cell(row: dict, min_support: int) -> str:
    text = f"{_pct(row['recall'])} ({row['support']})"
    return text if row["support"] >= min_support else f"*{text}*"
