"""Where the classifier looks: class-token attention of the base ViT's last block.

The base network's tokens are three scales of `grid x grid` tokens (backbone stages 1-3, in
that order). A forward pre-hook captures the last block's attention input, and that block's
`vit.Attention.attention_weights` gives its weights. The class token's row, averaged over
heads, is split into the three scales and each is reshaped to its grid and drawn over the face.

With reference images (a face of the same class, one of another class), `explain_csa` draws
the CSA maps of the training topology, per scale and per branch, as the paper's figures do; it
needs a weights file holding the training graph (what `qcsfer train` writes as best.safetensors).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from ..data.transforms import eval_transform
from ..errors import ImageError, MissingDependencyError, UsageError
from ..imaging import ImageInput, describe
from ..models.qcs import QCSModel
from .backends import TorchBackend
from .recognizer import ExpressionRecognizer
from .results import Prediction


@dataclass(frozen=True)
class Attention:
    """Class-token attention of one face (head mean of the last block)."""

    maps: np.ndarray  # 3 x grid x grid: attention to each token, scales 1-3
    to_self: float  # attention the class token pays to itself

    @property
    def shares(self) -> tuple[float, float, float]:
        """Fraction of the class token's attention on each scale."""
        return tuple(float(m.sum()) for m in self.maps)  # type: ignore[return-value]


def class_token_attention(
    base: torch.nn.Module, images: torch.Tensor
) -> tuple[torch.Tensor, list[Attention]]:
    """(logits, attention per image) for normalised images B x 3 x S x S."""
    block = base.vit.blocks[-1]
    captured: dict[str, torch.Tensor] = {}

    def keep_input(_module: torch.nn.Module, args: tuple[torch.Tensor, ...]) -> None:
        captured["x"] = args[0].detach()

    handle = block.attn.register_forward_pre_hook(keep_input)
    try:
        with torch.inference_mode():
            logits = base(images)
            weights = block.attn.attention_weights(captured["x"])
    finally:
        handle.remove()
    grid = base.config.token_grid
    row = weights.mean(dim=1)[:, 0]  # B x (1 + 3N): the class token's row, head mean
    maps = row[:, 1:].reshape(-1, 3, grid, grid).float().cpu().numpy()
    return logits, [Attention(m, float(r[0])) for m, r in zip(maps, row.cpu(), strict=True)]


def _figure_class() -> Any:
    try:
        from matplotlib.figure import Figure
    except ImportError as exc:
        raise MissingDependencyError(
            "qcsfer explain draws with matplotlib, which is not installed: "
            "pip install 'qcsfer[plots]'"
        ) from exc
    return Figure


def render(
    face: np.ndarray,
    attention: Attention,
    prediction: Prediction,
    path: Path,
    stage_sides: tuple[int, int, int],
) -> Path:
    """Face, then the face under each scale's attention (one colour scale for all three)."""
    figure_class = _figure_class()
    fig = figure_class(figsize=(11, 3.3), dpi=100, layout="constrained")
    axes = fig.subplots(1, 4)
    height, width = face.shape[:2]
    vmin, vmax = float(attention.maps.min()), float(attention.maps.max())
    vmax = vmax if vmax > vmin else vmin + 1e-6
    axes[0].imshow(face)
    axes[0].set_title(f"{prediction.label} {prediction.confidence:.0%}")
    grid = attention.maps.shape[-1]
    for i, (ax, share) in enumerate(zip(axes[1:], attention.shares, strict=True)):
        ax.imshow(face)
        image = ax.imshow(
            attention.maps[i],
            cmap="inferno",
            alpha=0.55,
            vmin=vmin,
            vmax=vmax,
            extent=(0, width, height, 0),
            interpolation="bilinear",
        )
        side = stage_sides[i]
        ax.set_title(f"scale {i + 1}: {side}x{side} map -> {grid}x{grid}\n{share:.0%} of attention")
    for ax in axes:
        ax.set_axis_off()
    fig.colorbar(image, ax=axes[1:], shrink=0.8, label="class-token attention")
    fig.suptitle(f"class-token attention, last block (self {attention.to_self:.0%})")
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    return path


def explain(
    recognizer: ExpressionRecognizer,
    image: ImageInput,
    out_dir: str | os.PathLike[str],
    *,
    boxes: list[tuple[float, float, float, float]] | None = None,
    stem: str | None = None,
) -> list[tuple[Prediction, Path]]:
    """One PNG per face in `out_dir`: `<stem>_face<i>_attention.png`; [] when no face."""
    backend = recognizer.backend
    if not isinstance(backend, TorchBackend):
        raise UsageError("explain needs a PyTorch model (a weights file), not an ONNX one")
    _figure_class()  # fail before any work when matplotlib is missing
    batch = recognizer.prepare(image, boxes=boxes, keep_crops=True)
    if not len(batch):
        return []
    logits, attention = class_token_attention(backend.model, backend.inputs(batch.inputs))
    # The same decision rule and prior as `predict`, so both name the same label and confidence.
    (predictions,) = recognizer.classify([batch], logits=logits.float().cpu().numpy())
    prep = recognizer.preprocessing
    stage_sides = backend.model.config.stage_sizes()
    stem = stem or Path(describe(image)).stem
    written = []
    for i, (crop, prediction, att) in enumerate(
        zip(batch.crops, predictions, attention, strict=True)
    ):
        shown = _model_view(crop, prep.image_size / prep.load_size, prep.grayscale)
        path = Path(out_dir) / f"{stem}_face{i}_attention.png"
        written.append((prediction, render(shown, att, prediction, path, stage_sides)))
    return written


def _model_view(crop: np.ndarray, fraction: float, grayscale: bool) -> np.ndarray:
    """The part of the full-resolution crop the model sees (its centre crop), as shown."""
    if crop.shape[0] != crop.shape[1]:  # a whole image: the model sees it squeezed square
        side = max(crop.shape[:2])
        crop = np.asarray(Image.fromarray(crop).resize((side, side), Image.BILINEAR))
    side = crop.shape[0]
    keep = max(1, round(side * fraction))
    start = (side - keep) // 2
    view = crop[start : start + keep, start : start + keep]
    if grayscale:
        gray = (view @ np.array([0.299, 0.587, 0.114])).round().astype(np.uint8)
        view = np.repeat(gray[:, :, None], 3, axis=2)
    return view


# ---------------------------------------------------------------------------------------------
# CSA maps: what each image of a quadruplet attends to, given its partners


BRANCH_NAMES = ("anchor", "positive (same class)", "negative (other class)", "negative2")


@torch.no_grad()
def csa_maps(model: QCSModel, images: torch.Tensor) -> np.ndarray:
    """The CSA position maps A_i of every scale and branch: 3 x G x grid x grid.

    images: G x 1 x 3 x S x S (one example per branch, normalised). These are the maps that
    gate each image's own values (softmax of S_i + k D_i), from the CSA modules themselves.
    """
    model.eval()
    tokens = model.base.forward_features(images.flatten(0, 1))[:, 1:]
    tokens = tokens.unflatten(0, images.shape[:2])
    grid = model.config.token_grid
    maps = []
    for csa, scale in zip(
        model.csa, tokens.split(model.config.tokens_per_scale, dim=2), strict=True
    ):
        maps.append(csa.position_maps(scale, model.pairs)[:, 0])  # G x N
    return torch.stack(maps).reshape(3, images.shape[0], grid, grid).float().cpu().numpy()


def explain_csa(
    recognizer: ExpressionRecognizer,
    model: QCSModel,
    image: ImageInput,
    references: list[ImageInput],
    out_dir: str | os.PathLike[str],
) -> Path:
    """One PNG: rows = scales, columns = branches (the image and its references), each face
    under its CSA map. QCS takes references [same class, other class, (second other class)];
    DCS takes [same class]. The first face found in each image is used."""
    if model.mode == "baseline" or model.config.csa.attention != "csa":
        raise UsageError("CSA maps need a DCS or QCS model trained with CSA attention")
    needed = model.branches - 1
    if model.mode == "qcs" and len(references) == 2:
        references = [*references, references[1]]  # negative2 defaults to the negative itself
    if len(references) != needed:
        raise UsageError(f"a {model.mode.upper()} model needs {needed} reference image(s)")
    prep = recognizer.preprocessing
    crops, decoded = [], []
    for item in [image, *references]:
        batch = recognizer.prepare(item, keep_crops=True)
        if not len(batch):
            raise ImageError(f"{describe(item)}: no face found")
        crops.append(batch.crops[0])
        decoded.append(batch.inputs[:1])
    images = torch.from_numpy(np.concatenate(decoded)).to(next(model.parameters()).device)
    inputs = eval_transform(images, prep).unsqueeze(1)
    maps = csa_maps(model, inputs)
    figure_class = _figure_class()
    g = model.branches
    fig = figure_class(figsize=(2.6 * g + 1, 7.5), dpi=100, layout="constrained")
    axes = fig.subplots(3, g, squeeze=False)
    for scale in range(3):
        for branch in range(g):
            face = _model_view(crops[branch], prep.image_size / prep.load_size, prep.grayscale)
            ax = axes[scale, branch]
            ax.imshow(face)
            height, width = face.shape[:2]
            shown = ax.imshow(
                maps[scale, branch],
                cmap="inferno",
                alpha=0.55,
                extent=(0, width, height, 0),
                interpolation="bilinear",
            )
            ax.set_xticks([])
            ax.set_yticks([])
            for spine in ax.spines.values():
                spine.set_visible(False)
            if scale == 0:
                ax.set_title(BRANCH_NAMES[branch])
        axes[scale, 0].set_ylabel(f"scale {scale + 1}")
    fig.colorbar(shown, ax=axes, shrink=0.6, label="CSA position weight A_i")
    k = ", ".join(f"{v:.2f}" for v in model.k_values()) or "-"
    fig.suptitle(f"Cross Similarity Attention maps ({model.mode.upper()}, k per scale: {k})")
    path = Path(out_dir) / f"{Path(describe(image)).stem}_csa.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    return path
