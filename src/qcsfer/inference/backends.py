"""Where logits come from: a PyTorch base network or an ONNX Runtime session.

Both take the same uint8 B x C x L x L batch and return float32 logits, so everything around
them (detection, cropping, results) is shared. This module imports neither torch nor
onnxruntime at import time: the ONNX backend with an .onnx file never needs torch.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from ..card import ModelCard, is_onnx_file
from ..errors import NotFoundError, UsageError
from ..preprocessing import Preprocessing
from .contract import INPUT_NAME, OUTPUT_NAME, onnx_card, onnx_session
from .model_input import numpy_eval_transform


class Backend(Protocol):
    preprocessing: Preprocessing

    def logits(self, batch: np.ndarray) -> np.ndarray:
        """uint8 B x C x L x L -> float32 B x K."""
        ...


@dataclass
class LoadedModel:
    """A backend plus its model card (what its outputs mean)."""

    backend: Backend
    card: ModelCard


class TorchBackend:
    """A BaseNetwork fed through the training code's own `eval_transform`."""

    def __init__(self, model: Any, preprocessing: Preprocessing, device: str = "cpu") -> None:
        from ..engine.device import select_device
        from ..models.vit import use_fused_attention

        self.preprocessing = preprocessing
        self.device = select_device(device)
        self.model = use_fused_attention(model.to(self.device).eval(), self.device.type == "cuda")

    def inputs(self, batch: np.ndarray) -> Any:
        """uint8 B x C x L x L -> the normalised tensor the network takes, on its device."""
        import torch

        from ..data.transforms import eval_transform

        images = torch.from_numpy(np.ascontiguousarray(batch)).to(self.device)
        return eval_transform(images, self.preprocessing)

    def logits(self, batch: np.ndarray) -> np.ndarray:
        import torch

        with torch.inference_mode():
            logits = self.model(self.inputs(batch))
        return logits.float().cpu().numpy()


class OnnxBackend:
    """An ONNX Runtime session on numpy-preprocessed input (no torch needed)."""

    def __init__(self, session: Any, preprocessing: Preprocessing) -> None:
        self.session = session
        self.preprocessing = preprocessing

    def logits(self, batch: np.ndarray) -> np.ndarray:
        x = numpy_eval_transform(batch, self.preprocessing)
        return self.session.run([OUTPUT_NAME], {INPUT_NAME: x})[0].astype(np.float32)


def load_backend(
    model: str | os.PathLike[str] | LoadedModel = "default",
    backend: str = "auto",
    device: str = "cpu",
    threads: int | None = None,
) -> LoadedModel:
    """Resolve `model` (default / weights / run dir / .onnx) into a ready backend.

    backend "auto": ONNX Runtime for .onnx files, PyTorch otherwise. backend "onnx" with a
    weights file exports it to ONNX in memory first (that step needs torch).
    """
    if isinstance(model, LoadedModel):  # already loaded (for example by `qcsfer explain`)
        return model
    if backend not in ("auto", "torch", "onnx"):
        raise UsageError(f"backend must be 'auto', 'torch' or 'onnx', got {backend!r}")
    if is_onnx_file(model):
        if backend == "torch":
            raise UsageError(f"{model}: an .onnx model runs with backend='onnx'")
        if not os.path.isfile(model):
            raise NotFoundError(f"no ONNX model at {model}")
        if device not in ("cpu", "auto"):
            raise UsageError("the ONNX backend runs on the CPU (device='cpu')")
        session = onnx_session(model, threads)
        card = onnx_card(session, os.fspath(model))
        return LoadedModel(OnnxBackend(session, card.preprocessing), card)

    from ..pretrained import load_model

    network, card = load_model(model)  # the card is validated where it is read
    if backend == "onnx":
        from .export import onnx_model_bytes

        session = onnx_session(onnx_model_bytes(network, card), threads)
        return LoadedModel(OnnxBackend(session, card.preprocessing), card)
    return LoadedModel(TorchBackend(network, card.preprocessing, device), card)
