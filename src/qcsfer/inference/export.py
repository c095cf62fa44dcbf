"""Export the base network (logits only) to ONNX, its model card embedded.

The exported graph takes normalised float32 images (B x 3 x S x S, any B) and returns logits
(B x K); the model card (classes, how to normalise, provenance) is stored inside the file
(`contract.py`), so a runtime needs nothing else.

There is no TorchScript export: TorchScript is deprecated upstream, a TorchScript file is a
program (loading one from elsewhere runs its code, which every other model input here refuses
to do), and ONNX already serves every runtime without qcsfer, including `load_backend`.

ONNX uses torch's TorchScript-based exporter (`dynamo=False`): it needs only the `onnx`
package, while the newer exporter also needs `onnxscript`. The ViT's CPU attention path is
plain matmul + softmax, which exports as standard ONNX ops. Every ONNX export is checked with
onnxruntime against PyTorch before it is reported as written.
"""

from __future__ import annotations

import contextlib
import io
import os
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import nn

from ..card import ModelCard
from ..errors import ExportError, MissingDependencyError, UsageError
from ..io import atomic_write
from .contract import INPUT_NAME, OUTPUT_NAME, embedded_metadata, onnx_session

ExportFormat = Literal["onnx"]
OPSET = 17
TOLERANCE = 1e-4


@dataclass(frozen=True)
class ExportReport:
    path: Path
    format: ExportFormat
    max_abs_diff: float  # largest |exported - PyTorch| logit on the check inputs
    batch_sizes: tuple[int, ...]  # batch sizes it was checked on (the batch axis is dynamic)


@contextlib.contextmanager
def _quiet_export() -> Iterator[None]:
    """Hide the exporters' deprecation and tracer chatter; real errors still raise."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", FutureWarning)
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        yield


def _image_size(base: nn.Module) -> int:
    return int(base.config.image_size)


def _check_inputs(base: nn.Module, batch_sizes: tuple[int, ...]) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    size = _image_size(base)
    return [torch.randn(b, 3, size, size, generator=generator) for b in batch_sizes]


def _onnx_proto(base: nn.Module, card: ModelCard, opset: int = OPSET) -> Any:
    try:
        import onnx
    except ImportError as exc:
        raise MissingDependencyError(
            "ONNX export needs the onnx package: pip install 'qcsfer[onnx]'"
        ) from exc
    network = base.eval().cpu()  # its forward is images -> logits: exported as it is
    example = torch.zeros(2, 3, _image_size(base), _image_size(base))
    buffer = io.BytesIO()
    with _quiet_export(), torch.no_grad():
        torch.onnx.export(
            network,
            (example,),
            buffer,
            dynamo=False,
            input_names=[INPUT_NAME],
            output_names=[OUTPUT_NAME],
            dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}},
            opset_version=opset,
            do_constant_folding=True,
        )
    proto = onnx.load_from_string(buffer.getvalue())
    onnx.helper.set_model_props(proto, embedded_metadata(card))
    proto.doc_string = "qcsfer base network: normalised face images -> expression logits"
    onnx.checker.check_model(proto)
    return proto


def onnx_model_bytes(base: nn.Module, card: ModelCard, opset: int = OPSET) -> bytes:
    """The serialised ONNX model of a base network (for in-memory ONNX Runtime sessions)."""
    return _onnx_proto(base, card, opset).SerializeToString()


def compare_onnx(
    base: nn.Module, model: bytes | str | os.PathLike[str], inputs: list[torch.Tensor]
) -> float:
    """Largest |ONNX Runtime - PyTorch| logit over `inputs` (normalised image batches)."""
    session = onnx_session(model, threads=1)
    worst = 0.0
    with torch.no_grad():
        for x in inputs:
            expected = base(x.cpu()).numpy()
            got = session.run([OUTPUT_NAME], {INPUT_NAME: x.cpu().numpy()})[0]
            if got.shape != expected.shape:
                raise ExportError(f"ONNX output shape {got.shape} != PyTorch {expected.shape}")
            worst = max(worst, float(np.abs(got - expected).max()))
    return worst


def export_onnx(
    base: nn.Module,
    card: ModelCard,
    out: str | os.PathLike[str],
    opset: int = OPSET,
    tolerance: float = TOLERANCE,
) -> ExportReport:
    """Write the ONNX model and check it with onnxruntime (batch sizes 1 and 3)."""
    base = base.eval().cpu()
    data = onnx_model_bytes(base, card, opset)
    batch_sizes = (1, 3)
    diff = compare_onnx(base, data, _check_inputs(base, batch_sizes))
    if not diff <= tolerance:
        raise ExportError(f"ONNX export differs from PyTorch by {diff:.3g} > {tolerance:g}")
    path = atomic_write(out, lambda temporary: temporary.write_bytes(data))
    return ExportReport(path, "onnx", diff, batch_sizes)


def export_weights(
    weights: str | os.PathLike[str],
    format: ExportFormat,
    out: str | os.PathLike[str],
    opset: int = OPSET,
) -> ExportReport:
    """Load a weights file (or 'default' / a run directory) and export its base network."""
    from ..pretrained import load_model

    if format != "onnx":
        raise UsageError(f"unknown export format {format!r}; qcsfer exports onnx")
    base, card = load_model(weights)
    return export_onnx(base, card, out, opset)
