"""How a model's logits become probabilities: the class prior, made explicit, and calibration.

A classifier trained on FERPlus learns its label prior (a third of the faces neutral, disgust
and contempt under 0.5% each) along with the expressions, and carries it to every photo it
reads. The decision rule names that prior and lets the user choose an operating point:

- `dataset`: the most accurate on data with the training set's class mix: the logits as
  trained, or with a strength fitted on a validation split (a model trained with logit
  adjustment has the prior removed and needs it put back).
- `balanced`: the logits minus `strength` x log(training prior) (post-hoc logit adjustment):
  every class weighted equally, for photos whose class mix is unknown.

Each operating point then divides by its own temperature, fitted on a validation split, so that
`confidence` means what it says (expected calibration error). Torch-free, like preprocessing.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .errors import UsageError

PRIORS = ("dataset", "balanced")


@dataclass(frozen=True)
class OperatingPoint:
    prior_strength: float = 0.0  # multiplies log(training prior), subtracted from the logits
    temperature: float = 1.0  # divides the adjusted logits


@dataclass(frozen=True)
class DecisionRule:
    """The training prior and one operating point per prior; identity when never fitted."""

    training_prior: tuple[float, ...] | None = None
    operating_points: dict[str, OperatingPoint] = field(default_factory=dict)
    default: str = "dataset"  # the prior `predict` uses unless told otherwise

    def __post_init__(self) -> None:
        for name in (*self.operating_points, self.default):
            if name not in PRIORS:
                raise UsageError(f"unknown prior {name!r}; choose from {PRIORS}")
        if self.training_prior is not None and min(self.training_prior) <= 0:
            raise UsageError("the training prior must be positive for every class")
        if self.training_prior is None and any(
            p.prior_strength for p in self.operating_points.values()
        ):
            raise UsageError("a prior strength needs the training prior it multiplies")

    def point(self, prior: str | None) -> OperatingPoint:
        name = prior or self.default
        if name not in PRIORS:
            raise UsageError(f"unknown prior {name!r}; choose from {PRIORS}")
        if name == "balanced" and self.training_prior is None:
            raise UsageError(
                "prior=balanced needs the model's training prior, which this model does not "
                "record; calibrate it (python tools/calibrate.py) or use prior=dataset"
            )
        return self.operating_points.get(name, OperatingPoint())

    def adjust(self, logits: np.ndarray, prior: str | None = None) -> np.ndarray:
        """Logits at the chosen operating point (prior-corrected, temperature-scaled)."""
        point = self.point(prior)
        adjusted = np.asarray(logits, dtype=np.float64)
        if point.prior_strength:
            adjusted = adjusted - point.prior_strength * np.log(self.training_prior)
        return (adjusted / point.temperature).astype(np.float32)

    def probabilities(self, logits: np.ndarray, prior: str | None = None) -> np.ndarray:
        return softmax(self.adjust(logits, prior))

    def to_dict(self) -> dict[str, Any]:
        return {
            "training_prior": None if self.training_prior is None else list(self.training_prior),
            "operating_points": {
                name: {"prior_strength": p.prior_strength, "temperature": p.temperature}
                for name, p in self.operating_points.items()
            },
            "default": self.default,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None) -> DecisionRule:
        if not data:
            return cls()
        prior = data.get("training_prior")
        return cls(
            training_prior=None if prior is None else tuple(float(p) for p in prior),
            operating_points={
                name: OperatingPoint(float(p["prior_strength"]), float(p["temperature"]))
                for name, p in data.get("operating_points", {}).items()
            },
            default=data.get("default", "dataset"),
        )


def softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(axis=-1, keepdims=True)
    e = np.exp(shifted)
    return e / e.sum(axis=-1, keepdims=True)
