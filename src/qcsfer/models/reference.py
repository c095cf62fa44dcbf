"""The authors' released models as qcsfer weights: what each was trained on, and the conversion.

A reference checkpoint holds tensors only; what they mean comes from the training script that
wrote it (method doc, sections 5-7, and the reference's own class lists):

- class order: RAF-DB's label order (surprise ... neutral), FERPlus's vote columns (neutral ...
  contempt), AffectNet's label ids (neutral ... anger, contempt for 8 classes), the same order
  and names our dataset readers use, so a converted model evaluates on them directly;
- preprocessing: 224 x 224 RGB, ImageNet mean/std, resized (no crop) at test time; the network
  itself resizes to 112 px (nearest) before the IR-50 backbone (`paper` configuration);
- architecture: the `paper` configuration; the 8-class DCS models use the plain pre-norm
  residual in their cross modules, the 8-class ViT has dropout after its attention projection.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch

from .. import __version__
from ..data import affectnet, ferplus, rafdb
from ..preprocessing import Preprocessing
from .configs import ModelConfig, get_config
from .convert import LoadReport, load_reference_checkpoint
from .qcs import QCSModel
from .weights import WeightsError, file_sha256, network_card, save_weights

ReferenceMode = Literal["qcs", "dcs"]
PREPROCESSING = Preprocessing(image_size=224, load_size=224, grayscale=False)


@dataclass(frozen=True)
class ReferenceFamily:
    """One dataset's released models (QCS and DCS share classes and preprocessing)."""

    dataset: str
    title: str
    classes: tuple[str, ...]
    paper_accuracy: dict[str, float]  # top-1 % in the paper (section 6), by mode

    def config(self, mode: ReferenceMode) -> ModelConfig:
        eight = len(self.classes) == 8
        residual = "prenorm" if mode == "dcs" and eight else "normed"
        return get_config(
            "paper",
            num_classes=len(self.classes),
            attn_proj_dropout=eight,
            csa={"residual": residual},
        )


FAMILIES: dict[str, ReferenceFamily] = {
    f.dataset: f
    for f in (
        ReferenceFamily("rafdb", "RAF-DB", rafdb.CLASSES, {"dcs": 92.57, "qcs": 92.50}),
        ReferenceFamily("ferplus", "FERPlus", ferplus.CLASSES, {"dcs": 91.41, "qcs": 91.41}),
        ReferenceFamily(
            "affectnet7", "AffectNet-7", affectnet.CLASSES[:7], {"dcs": 67.66, "qcs": 67.94}
        ),
        ReferenceFamily(
            "affectnet8", "AffectNet-8", affectnet.CLASSES, {"dcs": 64.40, "qcs": 64.30}
        ),
    )
}


def family(dataset: str) -> ReferenceFamily:
    if dataset not in FAMILIES:
        raise WeightsError(
            f"unknown reference dataset {dataset!r}; choose from {', '.join(FAMILIES)}"
        )
    return FAMILIES[dataset]


def convert_reference(
    source: str | os.PathLike[str],
    dataset: str,
    out: str | os.PathLike[str],
    mode: ReferenceMode = "qcs",
) -> tuple[Path, LoadReport]:
    """Write the authors' checkpoint `source` as a qcsfer training-weights file at `out`.

    Its model card holds the classes, the reference preprocessing, the configuration, the
    provenance (source file and sha256) and, as `published_test`, the paper's accuracy.

    The file keeps the whole training model (base network, CSA, cross ViT), so it can be
    evaluated, used for predictions, explained (CSA maps included) or trained further.
    """
    if mode not in ("qcs", "dcs"):
        raise WeightsError(f"reference mode must be qcs or dcs, got {mode!r}")
    chosen = family(dataset)
    config = chosen.config(mode)
    state, report = load_reference_checkpoint(source, config, mode)
    with torch.device("meta"):
        model = QCSModel(config, mode)
    model.load_state_dict(state, strict=True, assign=True)
    source = Path(source)
    provenance = {
        "source": "the authors' reference checkpoint (QCS, AAAI 2025)",
        "source_file": source.name,
        "source_sha256": file_sha256(source),
        "dataset": chosen.title,
        "metrics_source": "published_test: the paper's top-1 for the released checkpoint "
        "(section 6), not measured by qcsfer",
        "reference_preprocessing": "224 px RGB, ImageNet mean/std; nearest resize to 112 px "
        "inside the network",
        "skipped": sorted(set(report.skipped.values())),
        "ignored_pickled_objects": list(report.ignored),
        "converted_by": f"qcsfer {__version__}",
    }
    card = network_card(
        model,
        classes=chosen.classes,
        preprocessing=PREPROCESSING,
        metrics={"published_test": {"accuracy": chosen.paper_accuracy[mode] / 100}},
        provenance=provenance,
    )
    path = save_weights(model, out, card)
    return path, report


def converted_path(
    source: str | os.PathLike[str], dataset: str, mode: ReferenceMode, cache: Path
) -> Path:
    """A converted copy of `source` in `cache` (made once per file contents, dataset and mode)."""
    digest = file_sha256(Path(source))[:16]
    path = cache / f"{digest}-{dataset}-{mode}.safetensors"
    if not (path.is_file() and path.with_suffix(".json").is_file()):
        cache.mkdir(parents=True, exist_ok=True)
        convert_reference(source, dataset, path, mode)
    return path
