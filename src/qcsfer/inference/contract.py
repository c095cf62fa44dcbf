"""What an exported model file promises: tensor names, the embedded model card, its session.

`export.py` writes files that keep this contract and `backends.py` runs them; both import it
from here. Torch-free, so an .onnx model runs where only onnxruntime is installed.

The exported graph takes normalised float32 images (`images`, B x 3 x S x S) and returns
logits (`logits`, B x K). Its ONNX metadata_props hold the whole model card as JSON (`card`),
plus `classes` and `preprocessing` on their own for runtimes that read nothing else.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from typing import Any

from .. import __version__
from ..card import FORMAT, ModelCard, card_json
from ..errors import MissingDependencyError, WeightsError

EXPORT_FORMAT = "qcsfer-export"
INPUT_NAME = "images"
OUTPUT_NAME = "logits"


def embedded_metadata(card: ModelCard) -> dict[str, str]:
    """String key/values stored in an exported file: the card of its (base) network."""
    card = card.replace(network="base", tensors={})
    return {
        "format": EXPORT_FORMAT,
        "qcsfer_version": __version__,
        "card": card_json(card),
        "classes": json.dumps(list(card.classes)),
        "preprocessing": json.dumps(card.preprocessing.to_dict()),
        "input": f"{INPUT_NAME}: float32 B x 3 x S x S, normalised as in preprocessing",
        "output": f"{OUTPUT_NAME}: float32 B x K, K = len(classes)",
    }


def card_from_embedded(props: Mapping[str, str], where: str) -> ModelCard:
    """The card inside an exported file; files from before the card hold its parts as keys."""
    if props.get("format") != EXPORT_FORMAT:
        raise WeightsError(
            f"{where}: not exported by qcsfer (no classes/preprocessing metadata); "
            "use `qcsfer export WEIGHTS --format onnx`"
        )
    try:
        if "card" in props:
            data = json.loads(props["card"])
        else:
            if "classes" not in props or "preprocessing" not in props:
                raise WeightsError(f"{where}: qcsfer metadata lacks classes or preprocessing")
            parts = {
                k: json.loads(props[k])
                for k in ("classes", "preprocessing", "provenance", "model", "decision")
                if k in props
            }
            provenance = parts.get("provenance") or {}
            data = {
                **parts,
                "format": FORMAT,
                "format_version": 1,
                "qcsfer_version": props.get("qcsfer_version", "unknown"),
                "network": "base",
                "mode": provenance.get("mode") if isinstance(provenance, dict) else None,
                "model": parts.get("model", {}),
            }
    except json.JSONDecodeError as exc:
        raise WeightsError(f"{where}: corrupt qcsfer metadata ({exc})") from exc
    return ModelCard.from_dict(data, where)


def onnx_session(model: str | os.PathLike[str] | bytes, threads: int | None = None) -> Any:
    """An onnxruntime CPU session; a clear message when onnxruntime is not installed."""
    try:
        import onnxruntime as ort
    except ImportError as exc:
        raise MissingDependencyError(
            "the ONNX backend needs onnxruntime: pip install 'qcsfer[onnx]'"
        ) from exc
    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
    source = model if isinstance(model, bytes) else os.fspath(model)
    try:
        return ort.InferenceSession(source, options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises its own Fail/InvalidGraph types
        where = "in-memory model" if isinstance(model, bytes) else os.fspath(model)
        raise WeightsError(f"{where}: not a loadable ONNX model ({exc})") from exc


def onnx_card(session: Any, where: str) -> ModelCard:
    """The model card embedded by `qcsfer export --format onnx`."""
    return card_from_embedded(dict(session.get_modelmeta().custom_metadata_map), where)
