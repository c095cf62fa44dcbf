"""Typed run configuration: dataclasses, YAML files in configs/, and `--set a.b=value` overrides.

The resolved configuration is saved in every run directory and checkpoint, so a run can always
be reproduced or resumed from its own record.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal

import yaml

from .data.sampling import SamplerConfig
from .data.sources import SourceConfig
from .data.transforms import Augmentation
from .errors import ConfigError
from .models.configs import ModelConfig, get_config
from .preprocessing import Preprocessing
from .recipes import find_recipe, require_packaged_root
from .typed_data import from_dict, to_dict

log = logging.getLogger(__name__)


@dataclass
class DataConfig:
    format: str = "ferplus"  # ferplus | rafdb | affectnet | folder | csv
    root: str = "../shared/datasets/ferplus"
    train_split: str = "train"
    val_split: str | None = "valid"  # None: carve a stratified split from train
    val_fraction: float = 0.1  # used only when val_split is None
    options: dict[str, Any] = field(default_factory=dict)  # reader options, e.g. label_mode
    # Reader options for the validation split (None: the same as `options`). E.g. FERPlus
    # trained on vote distributions is still selected on majority labels.
    val_options: dict[str, Any] | None = None
    limit: int | None = None  # use only this many training images (smoke tests)
    cache_dir: str | None = "default"  # decoded-image cache; None disables it
    # Where decoded pixels live: "memory" (decoded once, fastest), "disk" (decoded per batch,
    # with the next batch prefetched), "auto" (memory when a split fits in 8 GB decoded).
    storage: Literal["auto", "memory", "disk"] = "auto"
    # More training datasets mixed into train_split (data/sources.py): each with its reader,
    # class mapping, framing, sampling weight and an optional held-out slice.
    sources: list[SourceConfig] = field(default_factory=list)


@dataclass
class OptimConfig:
    name: Literal["adam", "adamw", "sgd"] = "adamw"
    lr: float = 1e-3
    weight_decay: float = 0.05
    betas: tuple[float, float] = (0.9, 0.999)
    momentum: float = 0.9
    sam: bool = False  # wrap the optimiser in SAM (two forward-backward passes per step)
    sam_rho: float = 0.05
    sam_adaptive: bool = False
    # True: no weight decay at all, whatever `weight_decay` says. The reference passes weight
    # decay on the command line but never to its optimiser; the paper recipes keep its value
    # on record and set this, for exact reproduction of published runs.
    ignore_weight_decay: bool = False
    grad_clip: float | None = None
    # The pretrained backbone learns at lr * backbone_lr_scale; its first `frozen_layers`
    # layers (stem = 1, each depthwise-separable block 1 more) do not learn at all, which also
    # saves their backward pass.
    backbone_lr_scale: float = 1.0
    frozen_layers: int = 0

    # Old names still read from recipes, run directories and checkpoints (typed_data.from_dict)
    RENAMED_KEYS: ClassVar[dict[str, str]] = {"reference_weight_decay": "ignore_weight_decay"}

    def __post_init__(self) -> None:
        if not self.lr > 0:
            raise ConfigError(f"optim.lr must be positive, got {self.lr}")


@dataclass
class ScheduleConfig:
    name: Literal["exponential", "cosine", "onecycle", "constant"] = "cosine"
    gamma: float = 0.98  # exponential, per epoch (reference)
    warmup_epochs: float = 0.0
    min_lr_ratio: float = 0.0

    def __post_init__(self) -> None:
        if not self.warmup_epochs >= 0:
            raise ConfigError(f"schedule.warmup_epochs must be 0 or more, got {self.warmup_epochs}")


@dataclass
class InitConfig:
    """Where the starting weights come from (all optional; applied in this order)."""

    ir50: str | None = None  # POSTER++'s ir50.pth (MS-Celeb-1M) into the backbone
    reference: str | None = None  # an authors' QCS/DCS checkpoint ...
    # ... all of it, or only its IR backbone (the paper's "AffectNet-8 init", any head size)
    reference_parts: Literal["all", "backbone"] = "all"
    # A pretrained backbone file (`qcsfer convert --from tfjs`: the VGGFace2 MobileNet "faceres")
    backbone: str | None = None
    backbone_from: str | None = None  # a qcsfer weights file: its IR backbone (the paper's
    # "AffectNet-8 init" for RAF-DB/FERPlus)
    weights: str | None = None  # a qcsfer weights file: every tensor it holds (a second stage
    # of training: the whole training graph, or the base network of an inference file)


@dataclass
class TrainConfig:
    mode: Literal["baseline", "dcs", "qcs"] = "qcs"
    model: str = "small"  # a named configuration ...
    model_overrides: dict[str, Any] = field(default_factory=dict)  # ... with changes
    data: DataConfig = field(default_factory=DataConfig)
    init: InitConfig = field(default_factory=InitConfig)
    preprocessing: Preprocessing = field(default_factory=Preprocessing)
    augmentation: Augmentation = field(default_factory=Augmentation)
    sampler: SamplerConfig = field(default_factory=SamplerConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    epochs: int = 10
    # tau of logit adjustment in the loss (engine/logit_adjustment.py): 0 is plain cross-entropy
    logit_adjustment: float = 0.0
    batch_size: int = 32  # anchors per step and per process; a QCS step sees 4x images
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    precision: Literal["fp32", "bf16", "fp16"] = "bf16"
    channels_last: bool = True
    compile: bool = False
    eval_flip: bool = True  # average logits over the mirrored image when validating
    eval_batch_size: int = 256
    checkpoint_every_steps: int | None = None
    keep_checkpoints: bool = False  # also keep each last.pt as checkpoints/step-N.pt (averaging)
    max_steps: int | None = None  # stop after this many optimiser steps in total (tests, budgets)
    tensorboard: bool = False
    out_dir: str = "runs"
    name: str | None = None

    def __post_init__(self) -> None:
        positive = {
            "epochs": self.epochs,
            "batch_size": self.batch_size,
            "eval_batch_size": self.eval_batch_size,
        }
        for name, value in positive.items():
            if not value > 0:
                raise ConfigError(f"{name} must be positive, got {value}")
        if not (math.isfinite(self.logit_adjustment) and self.logit_adjustment >= 0):
            raise ConfigError(f"logit_adjustment must be >= 0, got {self.logit_adjustment}")
        if self.logit_adjustment and self.sampler.balanced:
            raise ConfigError(
                "logit_adjustment corrects for the training prior, which sampler.balanced "
                "already evens out: use one of the two"
            )
        for name, value in (
            ("checkpoint_every_steps", self.checkpoint_every_steps),
            ("max_steps", self.max_steps),
        ):
            if value is not None and value < 1:
                raise ConfigError(f"{name} must be at least 1 (or null), got {value}")

    def model_config(self, num_classes: int) -> ModelConfig:
        overrides = {**self.model_overrides, "num_classes": num_classes}
        config = get_config(self.model, **overrides)
        if config.image_size != self.preprocessing.image_size:
            raise ConfigError(
                f"model {self.model!r} takes {config.image_size} px but preprocessing.image_size "
                f"is {self.preprocessing.image_size}"
            )
        return config


def _set_path(data: dict[str, Any], dotted: str, value: Any) -> None:
    keys = dotted.split(".")
    node = data
    for key in keys[:-1]:
        node = node.setdefault(key, {})
        if not isinstance(node, dict):
            raise ConfigError(f"--set {dotted}: {key} is not a section")
    node[keys[-1]] = value


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> TrainConfig:
    """YAML file (optional) + `key.sub=value` overrides (values parsed as YAML) -> TrainConfig.
    `path` may also name a packaged recipe (`ferplus_small_cpu`, see recipes.py)."""
    data: dict[str, Any] = {}
    recipe = None
    if path is not None:
        recipe = find_recipe(path)
        path = recipe.path
        try:
            data = yaml.load(path.read_text(encoding="utf-8"), Loader=StrictLoader)
        except UnicodeDecodeError:
            raise ConfigError(f"{path}: not a YAML text file (it is not UTF-8 text)") from None
        except yaml.YAMLError as exc:
            raise ConfigError(f"{path}: not valid YAML ({_yaml_problem(exc)})") from None
        if data is None:  # empty, or only comments: the built-in defaults nobody chose
            raise ConfigError(
                f"{path}: the recipe is empty (no settings); write its settings, or leave the "
                "file out and give --set KEY=VALUE to train the defaults with changes"
            )
        if not isinstance(data, dict):
            raise ConfigError(f"{path}: the top level must be a mapping")
    keys = apply_overrides(data, overrides or [])
    if recipe is not None and not {"data", "data.root"} & set(keys):  # not when --set gives it
        if recipe.packaged:  # run by name, perhaps from a wheel: its root must be given
            require_packaged_root(recipe, (data.get("data") or {}).get("root"))
        else:
            _warn_relative_root(data, recipe.path)
    return from_dict(TrainConfig, data)


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> list[str]:
    """`key.sub=value` items (values parsed as YAML) set into `data`; returns the keys set."""
    keys = []
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"--set expects key=value, got {item!r}")
        key, raw = item.split("=", 1)
        _set_path(data, key.strip(), yaml_value(raw, f"--set {item}"))
        keys.append(key.strip())
    return keys


def yaml_value(text: str, where: str) -> Any:
    """A command-line value read as YAML (7 -> int, true -> bool, [a, b] -> list)."""
    try:
        return yaml.load(text, Loader=StrictLoader)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{where}: not a valid YAML value ({_yaml_problem(exc)})") from None


class StrictLoader(yaml.SafeLoader):
    """yaml.safe_load's loader, except that a key given twice in one mapping is an error:
    PyYAML keeps the last silently, so `epochs: 30` above a forgotten `epochs: 3` ran 3."""


def _unique_mapping(loader: StrictLoader, node: yaml.MappingNode) -> dict[Any, Any]:
    first: dict[Any, int] = {}
    for key_node, _ in node.value:
        if key_node.tag == "tag:yaml.org,2002:merge":  # `<<: *anchor`, resolved by PyYAML
            continue
        key = loader.construct_object(key_node, deep=True)
        try:
            seen = key in first
        except TypeError:  # an unhashable key: construct_mapping says so
            continue
        if seen:
            raise yaml.constructor.ConstructorError(
                None,
                None,
                f"duplicate key {key!r} (first at line {first[key] + 1})",
                key_node.start_mark,
            )
        first[key] = key_node.start_mark.line
    return loader.construct_mapping(node, deep=True)


StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _unique_mapping)


def _yaml_problem(exc: yaml.YAMLError) -> str:
    """PyYAML's complaint and where, in one line: "expected ... at line 1, column 6"."""
    if not isinstance(exc, yaml.MarkedYAMLError) or exc.problem is None:
        return str(exc).replace("\n", " ")
    mark = exc.problem_mark
    where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
    return f"{exc.problem}{where}"


def _warn_relative_root(data: dict[str, Any], path: Path) -> None:
    """A relative data.root is read from the current folder, not the config file's: say so
    when it is not found there (the shipped recipes expect the repository root)."""
    root = (data.get("data") or {}).get("root")
    if isinstance(root, str) and not Path(root).is_absolute() and not Path(root).exists():
        log.warning(
            "data.root %r in %s is relative to the current folder (%s), where it does not "
            "exist; run from the folder it is meant for (the repository root for the shipped "
            "recipes) or pass --set data.root=PATH",
            root,
            path,
            Path.cwd(),
        )


def save_config(config: TrainConfig, path: str | Path) -> None:
    Path(path).write_text(yaml.safe_dump(to_dict(config), sort_keys=False))


__all__ = [
    "DataConfig",
    "InitConfig",
    "OptimConfig",
    "ScheduleConfig",
    "TrainConfig",
    "apply_overrides",
    "from_dict",
    "load_config",
    "save_config",
    "to_dict",
    "yaml_value",
]
