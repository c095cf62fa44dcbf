"""Evaluate a model on a dataset split: after training (metrics, table, metrics.json, confusion
PNG) and on the validation split during training."""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..card import ModelCard
from ..config import TrainConfig
from ..data.datasets import read_dataset
from ..data.images import default_cache_dir, load_images
from ..data.records import DatasetError, LabeledImages
from ..data.splits import Split
from ..data.transforms import eval_transform
from ..errors import UsageError
from ..io import atomic_write
from ..models.base import BaseNetwork
from ..models.vit import use_fused_attention
from ..outputs import OutputError, check_output_folder, writing
from ..preprocessing import Preprocessing
from ..pretrained import load_model
from .calibration import PointReport, measure_operating_points
from .device import autocast, select_device
from .distributed import Distributed
from .metrics import Metrics, compute_metrics
from .plots import plot_confusion
from .run_files import is_run_dir

log = logging.getLogger(__name__)


@torch.no_grad()
def predict_logits(
    base: BaseNetwork,
    images: torch.Tensor,
    prep: Preprocessing,
    device: torch.device,
    precision: str = "fp32",
    flip: bool = False,
    batch_size: int = 256,
    channels_last: bool = False,
) -> torch.Tensor:
    """Logits (float32, on CPU) of the base network for uint8 images, optionally flip-averaged."""
    was_training = base.training
    base.eval()
    outputs = []
    for start in range(0, len(images), batch_size):
        batch = images[start : start + batch_size].to(device, non_blocking=True)
        views = [eval_transform(batch, prep)]
        if flip:
            views.append(eval_transform(batch, prep, flip=True))
        logits = 0
        for view in views:
            if channels_last:
                view = view.contiguous(memory_format=torch.channels_last)
            with autocast(device, precision):
                logits = logits + base(view).float()
        outputs.append((logits / len(views)).cpu())
    base.train(was_training)
    return torch.cat(outputs) if outputs else torch.zeros(0, base.config.num_classes)


def evaluate_split(
    base: BaseNetwork,
    split: Split,
    config: TrainConfig,
    device: torch.device,
    dd: Distributed,
    logit_offset: torch.Tensor | None = None,
) -> Metrics:
    """Validation metrics during training, of the logits plus `logit_offset` where one is
    given (the training prior put back after logit adjustment); under DDP each rank scores a
    shard and the confusion is summed."""
    shard = np.arange(dd.rank, len(split.records), dd.world_size)
    targets, predictions = [], []
    for chunk in np.array_split(shard, max(1, len(shard) // 4096)):
        images, valid = split.images.load(chunk)
        logits = predict_logits(
            base,
            images[torch.from_numpy(valid)],
            config.preprocessing,
            device,
            config.precision,
            config.eval_flip,
            config.eval_batch_size,
            config.channels_last,
        )
        if logit_offset is not None:
            logits = logits + logit_offset.to(logits.device)
        targets.append(split.records.labels[chunk[valid]])
        predictions.append(logits.argmax(1).numpy())
    metrics = compute_metrics(
        np.concatenate(targets), np.concatenate(predictions), split.records.classes
    )
    if dd.enabled:
        confusion = dd.reduce(torch.from_numpy(metrics.confusion).to(device))
        metrics = Metrics(metrics.classes, confusion.cpu().numpy())
    return metrics


def map_labels(
    data: LabeledImages, model_classes: tuple[str, ...], mapping: Mapping[str, str] | None
) -> tuple[np.ndarray, np.ndarray]:
    """Dataset labels -> model class ids. Returns (kept image indices, mapped labels).

    Without a mapping, classes are matched by name when every dataset class is a model class
    (in any order, some model classes possibly absent); a map is needed only for names that
    differ. A mapping {dataset class: model class} translates names; images of dataset classes
    left out of the mapping are excluded.
    """
    if mapping is None:
        if tuple(data.classes) == tuple(model_classes):
            return np.arange(len(data)), data.labels
        foreign = [name for name in data.classes if name not in model_classes]
        if foreign:
            raise DatasetError(
                f"the model's classes differ from the dataset's: {foreign} are not model classes; "
                "pass a class mapping (dataset=model pairs; dataset classes left out are "
                f"excluded).\n  model:   {list(model_classes)}\n  dataset: {list(data.classes)}"
            )
        mapping = {name: name for name in data.classes}
        log.info("dataset classes matched to the model's by name: %s", list(data.classes))
    unknown = [m for m in mapping.values() if m not in model_classes]
    missing = [d for d in mapping if d not in data.classes]
    if unknown or missing:
        raise DatasetError(
            f"class mapping names unknown model classes {unknown} or dataset classes {missing}; "
            f"model: {list(model_classes)}, dataset: {list(data.classes)}"
        )
    lookup = np.full(data.num_classes, -1)
    for d, m in mapping.items():
        lookup[data.classes.index(d)] = model_classes.index(m)
    mapped = lookup[data.labels]
    kept = np.flatnonzero(mapped >= 0)
    return kept, mapped[kept]


@dataclass(frozen=True)
class SplitLogits:
    """A model's logits on a dataset split, with the labels in the model's classes."""

    logits: np.ndarray  # float32, N x K
    labels: np.ndarray  # int64, N (images that could be read and are mapped)
    classes: tuple[str, ...]
    card: ModelCard
    skipped: int  # unreadable images
    excluded: int  # dataset classes left out by the class mapping


def split_logits(
    weights: str | Path | None,
    data_format: str,
    root: str | Path,
    split: str,
    *,
    options: Mapping[str, Any] | None = None,
    mapping: Mapping[str, str] | None = None,
    flip: bool = False,
    device: str = "auto",
    batch_size: int = 256,
    cache: bool = True,
) -> SplitLogits:
    """Logits of the readable images; refuses a split with no readable image to score."""
    if batch_size < 1:
        raise UsageError(f"batch size must be at least 1, got {batch_size}")
    target = select_device(device)  # an unavailable device: refused before any work
    model, card = load_model(weights)
    classes, prep = card.classes, card.preprocessing
    data = read_dataset(data_format, root, split, **dict(options or {}))
    kept, labels = map_labels(data, classes, mapping)
    if not len(kept):
        raise DatasetError(f"{data.name}/{split}: no images to evaluate (after the class mapping)")
    store = load_images(
        [data.paths[i] for i in kept],
        prep.load_size,
        prep.grayscale,
        default_cache_dir() if cache else None,
    )
    if store.skipped:
        log.warning("%d unreadable images skipped", store.skipped)
    valid = np.flatnonzero(store.valid)
    if not len(valid):
        raise DatasetError(
            f"{data.name}/{split}: none of its {len(kept)} images could be read (see the "
            "warnings above); nothing to evaluate"
        )
    model = use_fused_attention(model.to(target), target.type == "cuda")
    logits = predict_logits(
        model, store.images[torch.from_numpy(valid)], prep, target, "fp32", flip, batch_size
    )
    return SplitLogits(
        logits.numpy(), labels[valid], classes, card, store.skipped, len(data) - len(kept)
    )


@dataclass(frozen=True)
class Evaluation:
    """Metrics at the requested operating point, and every operating point the model has."""

    metrics: Metrics
    points: dict[str, PointReport]


def evaluate(
    weights: str | Path | None,
    data_format: str,
    root: str | Path,
    split: str,
    *,
    out_dir: str | Path | None = None,
    prior: str = "dataset",
    **reading: Any,
) -> Evaluation:
    """Evaluate at `prior` ('dataset': the training class mix; 'balanced': prior-corrected).

    reading: how the split is read and scored, as for `split_logits` (options, mapping, flip,
    device, batch_size, cache).
    """
    if out_dir is not None:
        check_output_folder(out_dir)  # before the work, not after it
        if Path(out_dir).is_dir() and is_run_dir(Path(out_dir)):
            raise OutputError(
                f"{out_dir}: is a training run's directory, whose confusion_matrix.png this "
                f"would replace: choose another --out (e.g. {Path(out_dir) / 'evaluation'})"
            )
    result = split_logits(weights, data_format, root, split, **reading)
    rule = result.card.decision
    rule.point(prior)  # an unknown prior or a missing training prior fails before any work
    points = measure_operating_points(result.logits, result.labels, result.classes, rule)
    metrics = compute_metrics(
        result.labels, rule.adjust(result.logits, prior).argmax(1), result.classes
    )
    if out_dir is not None:
        out = Path(out_dir)
        report = {
            **metrics.to_dict(),
            "prior": prior,
            "operating_points": {name: asdict(p) for name, p in points.items()},
            "weights": str(weights) if weights else "default",
            "dataset": {"format": data_format, "root": str(root), "split": split},
            "flip_tta": reading.get("flip", False),
            "skipped_images": result.skipped,
            "excluded_by_mapping": result.excluded,
        }
        text = json.dumps(report, indent=2)
        with writing(out / "metrics.json"):
            atomic_write(out / "metrics.json", lambda tmp: tmp.write_text(text))
        with writing(out / "confusion_matrix.png"):
            plot_confusion(metrics, out / "confusion_matrix.png", title=f"{data_format} {split}")
    return Evaluation(metrics, points)
