"""Export the base network (logits only) to ONNX or TorchScript, metadata embedded.

The exported graph takes normalised float32 images (B x 3 x S x S, any B) and returns logits
(B x K); what the classes are and how to normalise is stored inside the file (ONNX
metadata_props, TorchScript extra file `qcsfer.json`), so a runtime needs nothing else.

ONNX uses torch's TorchScript-based exporter (`dynamo=False`): it needs only the `onnx`
package, while the newer exporter also needs `onnxscript`. The ViT's CPU attention path is
plain matmul + softmax, which exports as standard ONNX ops. Every ONNX export is checked with
onnxruntime against PyTorch before it is reported as written.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import nn

from .. import __version__
from ..io import atomic_write
from ..preprocessing import Preprocessing
from .backends import EXPORT_FORMAT, INPUT_NAME, OUTPUT_NAME, onnx_session

ExportFormat = Literal["onnx", "torchscript"]
OPSET = 17
TOLERANCE = 1e-4
TORCHSCRIPT_METADATA = "qcsfer.json"


class LogitsOnly(nn.Module):
    """The base network without its token output: what a deployed classifier needs."""

    def __init__(self, base: nn.Module) -> None:
        super().__init__()
        self.base = base

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.base(images)[0]


@dataclass(frozen=True)
class ExportReport:
    path: Path
    format: ExportFormat
    max_abs_diff: float  # largest |exported - PyTorch| logit on the check inputs
    batch_sizes: tuple[int, ...]  # batch sizes it was checked on (the batch axis is dynamic)


def embedded_metadata(metadata: dict[str, Any]) -> dict[str, str]:
    """String key/values stored in the exported file (JSON for structured values).

    `metadata` needs the model's complete preprocessing (ValueError otherwise): an exported
    model must say how its inputs are prepared.
    """
    prep = Preprocessing.from_dict(metadata.get("preprocessing"))
    return {
        "format": EXPORT_FORMAT,
        "qcsfer_version": __version__,
        "classes": json.dumps(list(metadata["classes"])),
        "preprocessing": json.dumps(prep.to_dict()),
        "provenance": json.dumps(metadata.get("provenance", {}), default=str),
        "model": json.dumps(metadata.get("model", {}), default=str),
        "decision": json.dumps(metadata.get("decision")),
        "input": f"{INPUT_NAME}: float32 B x 3 x S x S, normalised as in preprocessing",
        "output": f"{OUTPUT_NAME}: float32 B x K, K = len(classes)",
    }


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


def _onnx_proto(base: nn.Module, metadata: dict[str, Any], opset: int = OPSET) -> Any:
    try:
        import onnx
    except ImportError as exc:
        raise ImportError("ONNX export needs the onnx package: pip install 'qcsfer[onnx]'") from exc
    wrapper = LogitsOnly(base).eval().cpu()
    example = torch.zeros(2, 3, _image_size(base), _image_size(base))
    buffer = io.BytesIO()
    with _quiet_export(), torch.no_grad():
        torch.onnx.export(
            wrapper,
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
    onnx.helper.set_model_props(proto, embedded_metadata(metadata))
    proto.doc_string = "qcsfer base network: normalised face images -> expression logits"
    onnx.checker.check_model(proto)
    return proto


def onnx_model_bytes(base: nn.Module, metadata: dict[str, Any], opset: int = OPSET) -> bytes:
    """The serialised ONNX model of a base network (for in-memory ONNX Runtime sessions)."""
    return _onnx_proto(base, metadata, opset).SerializeToString()


def compare_onnx(
    base: nn.Module, model: bytes | str | os.PathLike[str], inputs: list[torch.Tensor]
) -> float:
    """Largest |ONNX Runtime - PyTorch| logit over `inputs` (normalised image batches)."""
    session = onnx_session(model, threads=1)
    worst = 0.0
    with torch.no_grad():
        for x in inputs:
            expected = base(x.cpu())[0].numpy()
            got = session.run([OUTPUT_NAME], {INPUT_NAME: x.cpu().numpy()})[0]
            if got.shape != expected.shape:
                raise RuntimeError(f"ONNX output shape {got.shape} != PyTorch {expected.shape}")
            worst = max(worst, float(np.abs(got - expected).max()))
    return worst


def export_onnx(
    base: nn.Module,
    metadata: dict[str, Any],
    out: str | os.PathLike[str],
    opset: int = OPSET,
    tolerance: float = TOLERANCE,
) -> ExportReport:
    """Write the ONNX model and check it with onnxruntime (batch sizes 1 and 3)."""
    base = base.eval().cpu()
    data = onnx_model_bytes(base, metadata, opset)
    batch_sizes = (1, 3)
    diff = compare_onnx(base, data, _check_inputs(base, batch_sizes))
    if not diff <= tolerance:
        raise RuntimeError(f"ONNX export differs from PyTorch by {diff:.3g} > {tolerance:g}")
    path = atomic_write(out, lambda temporary: temporary.write_bytes(data))
    return ExportReport(path, "onnx", diff, batch_sizes)


def export_torchscript(
    base: nn.Module,
    metadata: dict[str, Any],
    out: str | os.PathLike[str],
    tolerance: float = TOLERANCE,
) -> ExportReport:
    """Trace the CPU graph (dynamic batch), embed metadata as an extra file, check it."""
    base = base.eval().cpu()
    wrapper = LogitsOnly(base).eval()
    size = _image_size(base)
    with _quiet_export(), torch.no_grad():
        traced = torch.jit.trace(wrapper, torch.zeros(2, 3, size, size), check_trace=False)
    extra = {TORCHSCRIPT_METADATA: json.dumps(embedded_metadata(metadata))}
    buffer = io.BytesIO()
    with _quiet_export():
        torch.jit.save(traced, buffer, _extra_files=extra)
    batch_sizes = (1, 3)
    diff = 0.0
    with _quiet_export(), torch.no_grad():
        loaded = torch.jit.load(io.BytesIO(buffer.getvalue()), map_location="cpu")
        for x in _check_inputs(base, batch_sizes):
            diff = max(diff, float((loaded(x) - wrapper(x)).abs().max()))
    if not diff <= tolerance:
        raise RuntimeError(f"TorchScript export differs from PyTorch by {diff:.3g}")
    path = atomic_write(out, lambda temporary: temporary.write_bytes(buffer.getvalue()))
    return ExportReport(path, "torchscript", diff, batch_sizes)


def load_torchscript(path: str | os.PathLike[str]) -> tuple[Any, dict[str, Any]]:
    """(scripted module, metadata) from a file written by `export_torchscript`."""
    extra = {TORCHSCRIPT_METADATA: ""}
    with _quiet_export():
        module = torch.jit.load(os.fspath(path), map_location="cpu", _extra_files=extra)
    props = json.loads(extra[TORCHSCRIPT_METADATA] or "{}")
    if props.get("format") != EXPORT_FORMAT:
        raise ValueError(f"{path}: no qcsfer metadata inside")
    metadata = {k: json.loads(props[k]) for k in ("classes", "preprocessing", "provenance")}
    return module, metadata


def export_weights(
    weights: str | os.PathLike[str],
    format: ExportFormat,
    out: str | os.PathLike[str],
    opset: int = OPSET,
) -> ExportReport:
    """Load a weights file (or 'default' / a run directory) and export its base network."""
    from ..pretrained import load_model

    base, metadata = load_model(weights)
    if format == "onnx":
        return export_onnx(base, metadata, out, opset)
    if format == "torchscript":
        return export_torchscript(base, metadata, out)
    raise ValueError(f"unknown export format {format!r}; choose onnx or torchscript")
