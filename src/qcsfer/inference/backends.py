"""Where logits come from: a PyTorch base network or an ONNX Runtime session.

Both take the same uint8 B x C x L x L batch and return float32 logits, so everything around
them (detection, cropping, results) is shared. This module imports neither torch nor
onnxruntime at import time: the ONNX backend with an .onnx file never needs torch.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from ..preprocessing import Preprocessing
from .preprocess import numpy_eval_transform

EXPORT_FORMAT = "qcsfer-export"
INPUT_NAME = "images"
OUTPUT_NAME = "logits"


class Backend(Protocol):
    preprocessing: Preprocessing

    def logits(self, batch: np.ndarray) -> np.ndarray:
        """uint8 B x C x L x L -> float32 B x K."""
        ...


@dataclass
class LoadedModel:
    """A backend plus what its outputs mean."""

    backend: Backend
    classes: list[str]
    metadata: dict[str, Any] = field(default_factory=dict)


class TorchBackend:
    """A BaseNetwork fed through the training code's own `eval_transform`."""

    def __init__(self, model: Any, preprocessing: Preprocessing, device: str = "cpu") -> None:
        import torch

        self.preprocessing = preprocessing
        self.device = torch.device(_torch_device(device))
        self.model = model.to(self.device).eval()

    def inputs(self, batch: np.ndarray) -> Any:
        """uint8 B x C x L x L -> the normalised tensor the network takes, on its device."""
        import torch

        from ..data.transforms import eval_transform

        images = torch.from_numpy(np.ascontiguousarray(batch)).to(self.device)
        return eval_transform(images, self.preprocessing)

    def logits(self, batch: np.ndarray) -> np.ndarray:
        import torch

        with torch.inference_mode():
            logits, _ = self.model(self.inputs(batch))
        return logits.float().cpu().numpy()


class OnnxBackend:
    """An ONNX Runtime session on numpy-preprocessed input (no torch needed)."""

    def __init__(self, session: Any, preprocessing: Preprocessing) -> None:
        self.session = session
        self.preprocessing = preprocessing

    def logits(self, batch: np.ndarray) -> np.ndarray:
        x = numpy_eval_transform(batch, self.preprocessing)
        return self.session.run([OUTPUT_NAME], {INPUT_NAME: x})[0].astype(np.float32)


def _torch_device(device: str) -> str:
    if device == "auto":
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


def model_preprocessing(metadata: dict[str, Any], where: str) -> Preprocessing:
    """The complete preprocessing a model's metadata records; ValueError naming `where`."""
    try:
        return Preprocessing.from_dict(metadata.get("preprocessing"))
    except ValueError as exc:
        raise ValueError(f"{where}: {exc}") from exc


def onnx_session(model: str | os.PathLike[str] | bytes, threads: int | None = None) -> Any:
    """An onnxruntime CPU session; a clear message when onnxruntime is not installed."""
    try:
        import onnxruntime as ort
    except ImportError as exc:
        raise ImportError("the ONNX backend needs onnxruntime: pip install 'qcsfer[onnx]'") from exc
    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
    source = model if isinstance(model, bytes) else os.fspath(model)
    try:
        return ort.InferenceSession(source, options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises its own Fail/InvalidGraph types
        where = "in-memory model" if isinstance(model, bytes) else os.fspath(model)
        raise ValueError(f"{where}: not a loadable ONNX model ({exc})") from exc


def onnx_metadata(session: Any, where: str) -> dict[str, Any]:
    """classes, preprocessing and provenance embedded by `qcsfer export --format onnx`."""
    props = dict(session.get_modelmeta().custom_metadata_map)
    if props.get("format") != EXPORT_FORMAT:
        raise ValueError(
            f"{where}: not exported by qcsfer (no classes/preprocessing metadata); "
            "use `qcsfer export WEIGHTS --format onnx`"
        )
    try:
        metadata = {
            key: json.loads(props[key])
            for key in ("classes", "preprocessing", "provenance", "model", "decision")
            if key in props
        }
    except json.JSONDecodeError as exc:
        raise ValueError(f"{where}: corrupt qcsfer metadata ({exc})") from exc
    metadata["qcsfer_version"] = props.get("qcsfer_version")
    if not isinstance(metadata.get("classes"), list) or "preprocessing" not in metadata:
        raise ValueError(f"{where}: qcsfer metadata lacks classes or preprocessing")
    model_preprocessing(metadata, where)  # fail here, with the file's name, if it is invalid
    return metadata


def is_onnx_file(model: object) -> bool:
    return isinstance(model, str | os.PathLike) and os.fspath(model).lower().endswith(".onnx")


def load_backend(
    model: str | os.PathLike[str] = "default",
    backend: str = "auto",
    device: str = "cpu",
    threads: int | None = None,
) -> LoadedModel:
    """Resolve `model` (default / weights / run dir / .onnx) into a ready backend.

    backend "auto": ONNX Runtime for .onnx files, PyTorch otherwise. backend "onnx" with a
    weights file exports it to ONNX in memory first (that step needs torch).
    """
    if backend not in ("auto", "torch", "onnx"):
        raise ValueError(f"backend must be 'auto', 'torch' or 'onnx', got {backend!r}")
    if is_onnx_file(model):
        if backend == "torch":
            raise ValueError(f"{model}: an .onnx model runs with backend='onnx'")
        if not os.path.isfile(model):
            raise FileNotFoundError(f"no ONNX model at {model}")
        if device not in ("cpu", "auto"):
            raise ValueError("the ONNX backend runs on the CPU (device='cpu')")
        session = onnx_session(model, threads)
        where = os.fspath(model)
        metadata = onnx_metadata(session, where)
        prep = model_preprocessing(metadata, where)
        return LoadedModel(OnnxBackend(session, prep), list(metadata["classes"]), metadata)

    from ..pretrained import load_model

    network, metadata = load_model(model)  # its metadata is validated (models.weights)
    classes = list(metadata["classes"])
    prep = model_preprocessing(metadata, os.fspath(model))
    if backend == "onnx":
        from .export import onnx_model_bytes

        data = onnx_model_bytes(network, metadata)
        return LoadedModel(OnnxBackend(onnx_session(data, threads), prep), classes, metadata)
    return LoadedModel(TorchBackend(network, prep, device), classes, metadata)
