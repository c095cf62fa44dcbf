"""The model card: what a model's outputs mean and how to feed it, read and written here only.

Like torchvision's weights objects, a card travels with the tensors (the `.json` sidecar of a
weights file, the metadata inside an exported ONNX file) and carries everything a runtime and
a reader need: class names, preprocessing, the network's configuration, the decision rule
(training class prior, operating points with their calibration), measured metrics and
provenance. Torch-free, so the ONNX backend reads it where torch is not installed.

The JSON schema (format "qcsfer-weights", versioned by `format_version`):

    format, format_version, qcsfer_version   what wrote it
    network      "base" (inference network) or "training" (the whole QCSModel)
    mode         baseline / dcs / qcs: the training topology (null if unknown for "base")
    model        ModelConfig as a mapping (models/configs.py)
    classes      the output names, in logit order
    preprocessing  Preprocessing as a mapping (every field; preprocessing.py)
    decision     the decision rule (`qcsfer.decision`): training prior, operating points with
                 their prior strength and temperature, the default point; absent: identity
    metrics      v2: {evaluation name: {metric: number}}, e.g. {"valid_flip": {"accuracy": ..}}
    provenance   how it was made (dataset, config, commit, ...), a free mapping
    tensors      the tensor file: file, sha256, count, parameters (and v2: id, see weights.py)
    meaning_sha256  a digest of each field above from network to decision, checked on reading
                 (card_digest.py); absent from cards written before it

Version 1 files (no metrics) are read unchanged: their metrics are taken from either
provenance layout (the trainer's `val_accuracy`, `tools/ship_model.py`'s
`validation.{plain,flip}`). That layout is only read: writers give a card its metrics and mode
as fields (`models.weights.network_card`).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from . import __version__
from .card_digest import DIGEST_KEY, check_meaning, meaning_digests
from .decision import DecisionRule
from .errors import WeightsError
from .io import atomic_write
from .preprocessing import Preprocessing

FORMAT = "qcsfer-weights"
FORMAT_VERSION = 2
NETWORKS = ("base", "training")  # BaseNetwork state dict, or the whole QCSModel
MODES = ("baseline", "dcs", "qcs")
Network = Literal["base", "training"]
Metrics = Mapping[str, Mapping[str, float]]


@dataclass(frozen=True)
class ModelCard:
    """Everything about a model except its tensors. `from_dict` validates; `to_dict` is JSON."""

    network: Network
    model: Mapping[str, Any]  # ModelConfig.to_dict(); `models.weights.model_config` builds it
    classes: tuple[str, ...]
    preprocessing: Preprocessing
    mode: str | None = None
    decision: DecisionRule = field(default_factory=DecisionRule)
    metrics: Metrics = field(default_factory=dict)
    provenance: Mapping[str, Any] = field(default_factory=dict)
    tensors: Mapping[str, Any] = field(default_factory=dict)
    qcsfer_version: str = __version__

    def __post_init__(self) -> None:
        object.__setattr__(self, "classes", tuple(self.classes))
        try:  # as JSON has it (tuples as lists), so a card equals itself read back
            object.__setattr__(self, "model", json.loads(json.dumps(dict(self.model))))
        except (TypeError, ValueError) as exc:
            raise WeightsError(f"model config is not JSON data: {exc}") from exc
        if not self.classes or not all(isinstance(c, str) for c in self.classes):
            raise WeightsError("classes must be a list of names (strings), at least one")
        if self.network not in NETWORKS:
            raise WeightsError(f"unknown network {self.network!r}; expected one of {NETWORKS}")
        if self.mode not in (*MODES, None) or (self.network == "training" and self.mode is None):
            raise WeightsError(f"unknown training mode {self.mode!r}")
        prior = self.decision.training_prior
        if prior is not None and len(prior) != len(self.classes):
            raise WeightsError(f"a training prior of {len(prior)} for {len(self.classes)} classes")

    @property
    def prior(self) -> tuple[float, ...] | None:
        """The training class frequencies, in class order, when the decision rule records them."""
        return self.decision.training_prior

    def accuracy(self) -> tuple[str, float] | None:
        """(evaluation name, accuracy) of the first evaluation that reports one, else None."""
        for name, values in self.metrics.items():
            if "accuracy" in values:
                return name, float(values["accuracy"])
        return None

    def summary(self) -> str:
        """Human-readable lines: what the model is, how well it did, where it came from."""
        prep = self.preprocessing
        kind = "inference network" if self.network == "base" else "training graph"
        lines = [
            f"model: {self.model.get('name', '?')} ({self.mode or 'mode unknown'}, {kind}), "
            f"qcsfer {self.qcsfer_version}",
            f"classes ({len(self.classes)}): {', '.join(self.classes)}",
            f"preprocessing: {prep.image_size} px {'gray' if prep.grayscale else 'RGB'} "
            f"(from {prep.load_size} px), mean {list(prep.mean)}, std {list(prep.std)}",
        ]
        for name, values in self.metrics.items() or {"(none recorded)": {}}.items():
            shown = ", ".join(_metric_text(k, v) for k, v in values.items())
            lines.append(f"metrics {name}: {shown}".rstrip(": "))
        if self.prior is not None:
            lines.append("training prior: " + ", ".join(f"{p:.4f}" for p in self.prior))
        for name, point in self.decision.operating_points.items():
            default = " (default)" if name == self.decision.default else ""
            lines.append(
                f"prior={name}{default}: strength {point.prior_strength:.2f}, "
                f"temperature {point.temperature:.3f}"
            )
        for key in ("dataset", "seed", "epochs", "best_epoch", "commit", "trained_on", "command"):
            if self.provenance.get(key) is not None:
                lines.append(f"{key.replace('_', ' ')}: {self.provenance[key]}")
        return "\n".join(lines + self._origins())

    def _origins(self) -> list[str]:
        """What the model was trained on and built from, with their licence notes: the terms a
        user inherits (tools/ship_model.py records them for multi-source models)."""
        lines = []
        for source in self.provenance.get("sources") or []:
            if isinstance(source, Mapping):
                lines.append(
                    f"source {source.get('name')}: {source.get('used')}; "
                    f"licence: {source.get('licence')}"
                )
        backbone = self.provenance.get("backbone")
        if isinstance(backbone, Mapping):
            origin = " ".join(
                str(backbone[k]) for k in ("source_package", "source_version") if k in backbone
            )
            lines.append(
                f"backbone: {backbone.get('network', backbone.get('file'))}"
                + (f" from {origin}" if origin else "")
                + (f"; licence: {backbone['licence']}" if "licence" in backbone else "")
            )
        return lines

    def replace(self, **changes: Any) -> ModelCard:
        """A validated copy with some fields changed (for example a fitted temperature)."""
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        """The card as JSON-ready data, in the current format version."""
        return {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "qcsfer_version": self.qcsfer_version,
            "network": self.network,
            "mode": self.mode,
            "model": dict(self.model),
            "classes": list(self.classes),
            "preprocessing": self.preprocessing.to_dict(),
            "decision": self.decision.to_dict(),
            "metrics": {name: dict(values) for name, values in self.metrics.items()},
            "provenance": dict(self.provenance),
            "tensors": dict(self.tensors),
        }

    @classmethod
    def from_dict(cls, data: object, where: str = "model card") -> ModelCard:
        """Read and validate a card of any supported version; WeightsError naming `where`."""
        try:
            return cls._from_dict(data)
        except WeightsError as exc:
            raise WeightsError(f"{where}: {exc}") from exc

    @classmethod
    def _from_dict(cls, data: object) -> ModelCard:
        if not isinstance(data, Mapping) or data.get("format") != FORMAT:
            raise WeightsError(f"not a {FORMAT} model card")
        version = data.get("format_version")
        if not isinstance(version, int) or isinstance(version, bool) or version < 1:
            raise WeightsError(f"format_version must be a positive integer, got {version!r}")
        if version > FORMAT_VERSION:
            raise WeightsError(
                f"format version {version} is newer than this qcsfer ({__version__}) reads "
                f"({FORMAT_VERSION})"
            )
        missing = [k for k in ("network", "model", "classes", "preprocessing") if k not in data]
        if missing:
            raise WeightsError(f"metadata lacks {missing}")
        if not isinstance(data["classes"], list):
            raise WeightsError("classes must be a list of names (strings)")
        provenance = _mapping(data.get("provenance"), "provenance")
        metrics = data.get("metrics")
        try:
            decision = DecisionRule.from_dict(_mapping(data.get("decision"), "decision"))
        except (TypeError, ValueError, KeyError) as exc:
            raise WeightsError(f"invalid decision rule: {exc!r}") from exc
        card = cls(
            network=data["network"],
            model=_mapping(data["model"], "model"),
            classes=tuple(data["classes"]),
            preprocessing=preprocessing_of(data["preprocessing"]),
            mode=data.get("mode"),
            decision=decision,
            metrics=_metrics(metrics) if metrics is not None else legacy_metrics(provenance),
            provenance=provenance,
            tensors=_mapping(data.get("tensors"), "tensors"),
            qcsfer_version=str(data.get("qcsfer_version", "unknown")),
        )
        check_meaning(data)  # valid but edited by hand (a class order reversed): refused too
        return card


def weights_paths(path: str | os.PathLike[str]) -> tuple[Path, Path]:
    """(tensors, card) for a weights path given as either file of the pair."""
    path = Path(path)
    if path.suffix == ".json":
        return path.with_suffix(".safetensors"), path
    return path, path.with_suffix(".json")


def read_card(path: str | os.PathLike[str]) -> ModelCard:
    """The validated card (the `.json` sidecar) of a weights file; no tensors are read."""
    tensor_path, json_path = weights_paths(path)
    if not json_path.is_file():
        raise WeightsError(_no_card(tensor_path, json_path))
    try:
        data = json.loads(json_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise WeightsError(f"{json_path}: unreadable metadata: {exc}") from exc
    return ModelCard.from_dict(data, str(json_path))


def is_onnx_file(model: object) -> bool:
    """A path to an exported model (which carries its card inside; see inference.contract)."""
    return isinstance(model, str | os.PathLike) and os.fspath(model).lower().endswith(".onnx")


def _no_card(tensor_path: Path, json_path: Path) -> str:
    """Why a file without a card cannot be used, by what it seems to be."""
    if is_onnx_file(tensor_path):
        return (
            f"{tensor_path}: an exported ONNX model; this needs the PyTorch weights "
            "(.safetensors and .json) it was exported from"
        )
    if tensor_path.suffix != ".safetensors":
        return f"{tensor_path}: not a qcsfer weights file (NAME.safetensors beside its NAME.json)"
    return (
        f"{json_path}: metadata sidecar missing; {tensor_path.name} cannot be used without "
        "it (it says which network, classes and preprocessing the tensors belong to)"
    )


def write_card(card: ModelCard, path: str | os.PathLike[str]) -> Path:
    """Write (or replace) the card of a weights file atomically; the tensors are untouched."""
    text = card_json(card)
    return atomic_write(
        weights_paths(path)[1], lambda temporary: temporary.write_text(text, encoding="utf-8")
    )


def card_json(card: ModelCard) -> str:
    """The card as JSON text, with the digests of its meaning (over the values as written);
    WeightsError if its free mappings hold non-JSON values."""
    try:
        data = json.loads(json.dumps(card.to_dict(), default=_json_default))
    except (TypeError, ValueError) as exc:
        raise WeightsError(f"metadata is not JSON serialisable: {exc}") from exc
    data[DIGEST_KEY] = meaning_digests(data)
    return json.dumps(data, indent=2) + "\n"


def _json_default(value: Any) -> Any:
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if hasattr(value, "item") and callable(value.item):  # numpy / torch scalars
        return value.item()
    if isinstance(value, set | frozenset):
        return sorted(value)
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def preprocessing_of(value: object) -> Preprocessing:
    """A saved preprocessing mapping, complete and valid, or WeightsError saying what is wrong."""
    if not isinstance(value, Mapping):
        raise WeightsError(
            "metadata lacks a 'preprocessing' mapping (image_size, load_size, grayscale, mean, "
            "std): without it inputs cannot be prepared as in training"
        )
    try:
        return Preprocessing.from_dict(value)
    except ValueError as exc:
        raise WeightsError(f"invalid preprocessing: {exc}") from exc


def legacy_metrics(provenance: Mapping[str, Any]) -> dict[str, dict[str, float]]:
    """Metrics from a version-1 provenance: `tools/ship_model.py`'s or the trainer's layout."""
    validation = provenance.get("validation")
    if isinstance(validation, Mapping):  # {"plain": {...}, "flip": {...}}
        names = {"plain": "valid", "flip": "valid_flip"}
        found = {
            names.get(view, f"valid_{view}"): values
            for view, values in sorted(validation.items(), key=lambda kv: kv[0] != "flip")
            if isinstance(values, Mapping)
        }
        return _metrics(found)
    if "val_accuracy" in provenance:  # the trainer: the selection metric of the best epoch
        config = provenance.get("config")
        flip = isinstance(config, Mapping) and bool(config.get("eval_flip"))
        values = {"accuracy": provenance["val_accuracy"]}
        if "val_balanced_accuracy" in provenance:
            values["balanced_accuracy"] = provenance["val_balanced_accuracy"]
        return _metrics({"valid_flip" if flip else "valid": values})
    return {}


def _metrics(value: object) -> dict[str, dict[str, float]]:
    metrics = _mapping(value, "metrics")
    out: dict[str, dict[str, float]] = {}
    for name, values in metrics.items():
        values = _mapping(values, f"metrics.{name}")
        if not all(_number(v) for v in values.values()):
            raise WeightsError(f"metrics.{name} must map metric names to numbers, got {values}")
        out[str(name)] = {str(k): v for k, v in values.items()}
    return out


def _metric_text(name: str, value: float) -> str:
    if name == "images" or isinstance(value, int):
        return f"{value} {name}"
    percent = (0 <= value <= 1 and "accuracy" in name) or name.endswith("f1")
    return f"{name.replace('_', ' ')} {100 * value:.2f}%" if percent else f"{name} {value:.4g}"


def _mapping(value: object, name: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise WeightsError(f"{name} must be a mapping, got {type(value).__name__}")
    return dict(value)


def _number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
