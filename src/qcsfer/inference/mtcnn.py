"""MTCNN face detector (Zhang et al., 2016) in plain PyTorch: boxes plus five landmarks.

A three-stage cascade of small CNNs: P-Net proposes windows over an image pyramid, R-Net
(24 px) and O-Net (48 px) re-score and refine them; O-Net also places the eyes, the nose tip
and the mouth corners, which `crop_face(..., align=True)` uses to level the eyes.

Weights are installed, never downloaded: the MIT-licensed state dicts inside the
`facenet-pytorch` wheel (`pip install --no-deps facenet-pytorch==2.6.0`; --no-deps because its
metadata pins an old torch and torchvision, neither of which is needed). We never import that
package; we locate its three `.pt` files and read them with `weights_only=True`. Their layout
(RGB input scaled to [-1, 1], fully connected layers fed in width-height-channel order) is the
port's convention, kept here.
"""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..errors import UsageError
from .faces import Face, sort_faces

# MTCNN boxes run from brow to chin (1.29x taller than wide); on the photo path of
# benchmarks/robustness.py a FERPlus crop is 0.954x their longer side (median, 442 faces), and
# the found faces read best trimmed to that: margin -0.02 reads 88.7% (their direct crops 87.6%),
# 0.02 reads 86.9%, 0.1 reads 83.9% (docs/benchmarks.md).
MTCNN_MARGIN = -0.02

# Candidates re-scored per R-Net/O-Net call. Their number depends on the image (hundreds on a
# busy one), and one call for all of them leaves the allocator holding memory for the largest
# such batch ever seen, which on a long video keeps rising; fixed-size calls bound it.
REFINE_BATCH = 64

WEIGHTS_PACKAGE = "facenet_pytorch"
INSTALL_HINT = "pip install --no-deps facenet-pytorch==2.6.0"


class PNet(nn.Module):
    """Proposal net: fully convolutional, one 12 x 12 window every 2 pixels."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.prelu1 = nn.Conv2d(3, 10, 3), nn.PReLU(10)
        self.pool1 = nn.MaxPool2d(2, 2, ceil_mode=True)
        self.conv2, self.prelu2 = nn.Conv2d(10, 16, 3), nn.PReLU(16)
        self.conv3, self.prelu3 = nn.Conv2d(16, 32, 3), nn.PReLU(32)
        self.conv4_1 = nn.Conv2d(32, 2, 1)  # face / not face
        self.conv4_2 = nn.Conv2d(32, 4, 1)  # box offsets

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.pool1(self.prelu1(self.conv1(x)))
        x = self.prelu3(self.conv3(self.prelu2(self.conv2(x))))
        return self.conv4_1(x).softmax(1)[:, 1], self.conv4_2(x)


def _flatten_whc(x: torch.Tensor) -> torch.Tensor:
    """N x C x H x W -> N x (W*H*C): the order the ported fully connected weights expect."""
    return x.permute(0, 3, 2, 1).reshape(len(x), -1)


class RNet(nn.Module):
    """Refinement net on 24 x 24 crops."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.prelu1 = nn.Conv2d(3, 28, 3), nn.PReLU(28)
        self.pool1 = nn.MaxPool2d(3, 2, ceil_mode=True)
        self.conv2, self.prelu2 = nn.Conv2d(28, 48, 3), nn.PReLU(48)
        self.pool2 = nn.MaxPool2d(3, 2, ceil_mode=True)
        self.conv3, self.prelu3 = nn.Conv2d(48, 64, 2), nn.PReLU(64)
        self.dense4, self.prelu4 = nn.Linear(576, 128), nn.PReLU(128)
        self.dense5_1 = nn.Linear(128, 2)
        self.dense5_2 = nn.Linear(128, 4)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.pool1(self.prelu1(self.conv1(x)))
        x = self.pool2(self.prelu2(self.conv2(x)))
        x = self.prelu4(self.dense4(_flatten_whc(self.prelu3(self.conv3(x)))))
        return self.dense5_1(x).softmax(1)[:, 1], self.dense5_2(x)


class ONet(nn.Module):
    """Output net on 48 x 48 crops: score, box offsets and five landmarks."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.prelu1 = nn.Conv2d(3, 32, 3), nn.PReLU(32)
        self.pool1 = nn.MaxPool2d(3, 2, ceil_mode=True)
        self.conv2, self.prelu2 = nn.Conv2d(32, 64, 3), nn.PReLU(64)
        self.pool2 = nn.MaxPool2d(3, 2, ceil_mode=True)
        self.conv3, self.prelu3 = nn.Conv2d(64, 64, 3), nn.PReLU(64)
        self.pool3 = nn.MaxPool2d(2, 2, ceil_mode=True)
        self.conv4, self.prelu4 = nn.Conv2d(64, 128, 2), nn.PReLU(128)
        self.dense5, self.prelu5 = nn.Linear(1152, 256), nn.PReLU(256)
        self.dense6_1 = nn.Linear(256, 2)
        self.dense6_2 = nn.Linear(256, 4)
        self.dense6_3 = nn.Linear(256, 10)  # x of the five points, then their y

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        x = self.pool1(self.prelu1(self.conv1(x)))
        x = self.pool2(self.prelu2(self.conv2(x)))
        x = self.pool3(self.prelu3(self.conv3(x)))
        x = self.prelu5(self.dense5(_flatten_whc(self.prelu4(self.conv4(x)))))
        return self.dense6_1(x).softmax(1)[:, 1], self.dense6_2(x), self.dense6_3(x)


def weights_dir() -> Path:
    """Where the installed facenet-pytorch wheel keeps pnet.pt, rnet.pt and onet.pt."""
    spec = importlib.util.find_spec(WEIGHTS_PACKAGE)  # locates the package without importing it
    if spec is None or not spec.submodule_search_locations:
        raise ImportError(f"the MTCNN detector needs its weights: {INSTALL_HINT}")
    return Path(next(iter(spec.submodule_search_locations))) / "data"


def nms(
    boxes: torch.Tensor, scores: torch.Tensor, threshold: float, by: str = "union"
) -> torch.Tensor:
    """Greedy non-maximum suppression; overlap is IoU ("union") or over the smaller box ("min")."""
    areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    order = scores.argsort(descending=True)
    keep = []
    while len(order):
        best, rest = order[0], order[1:]
        keep.append(best)
        top_left = torch.maximum(boxes[best, :2], boxes[rest, :2])
        bottom_right = torch.minimum(boxes[best, 2:], boxes[rest, 2:])
        inter = (bottom_right - top_left).clamp(min=0).prod(1)
        base = (
            areas[best] + areas[rest] - inter
            if by == "union"
            else areas[rest].clamp(max=areas[best])
        )
        order = rest[inter / base <= threshold]
    return torch.stack(keep) if keep else torch.zeros(0, dtype=torch.long)


def _regress(boxes: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
    """Move each edge by its predicted offset, in units of the box's width or height."""
    size = (boxes[:, 2:] - boxes[:, :2]).repeat(1, 2)
    return boxes + offsets * size


def _square(boxes: torch.Tensor) -> torch.Tensor:
    """The square of side max(w, h) centred on each box."""
    centre = (boxes[:, :2] + boxes[:, 2:]) / 2
    half = (boxes[:, 2:] - boxes[:, :2]).max(1, keepdim=True).values / 2
    return torch.cat([centre - half, centre + half], 1)


class MTCNNDetector:
    """MTCNN on RGB (or gray) uint8 arrays; faces carry O-Net's probability and landmarks.

    min_face: the smallest face searched for, in pixels of the (downscaled) detection image;
    thresholds: the three stages' face probabilities; max_side as for the Haar detector.
    """

    name = "mtcnn"
    margin = MTCNN_MARGIN  # the crop margin that frames its boxes like the training faces

    def __init__(
        self,
        *,
        min_face: int = 20,
        thresholds: tuple[float, float, float] = (0.6, 0.7, 0.8),
        scale_step: float = 0.709,
        max_side: int = 1280,
    ) -> None:
        if min_face < 12 or not 0 < scale_step < 1 or max_side < 32:
            raise UsageError("need min_face >= 12, 0 < scale_step < 1, max_side >= 32")
        if not all(0 <= t <= 1 for t in thresholds) or len(thresholds) != 3:
            raise UsageError(f"thresholds are three probabilities, got {thresholds}")
        folder = weights_dir()
        self.pnet, self.rnet, self.onet = PNet(), RNet(), ONet()
        for net, file in ((self.pnet, "pnet.pt"), (self.rnet, "rnet.pt"), (self.onet, "onet.pt")):
            path = folder / file
            if not path.is_file():
                raise FileNotFoundError(f"{path}: MTCNN weights missing; reinstall: {INSTALL_HINT}")
            net.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
            net.eval()
        self.min_face = min_face
        self.thresholds = thresholds
        self.scale_step = scale_step
        self.max_side = max_side

    @torch.inference_mode()
    def detect(self, image: np.ndarray) -> list[Face]:
        """Faces in an H x W x 3 RGB (or H x W gray) uint8 image, in reading order."""
        rgb = np.repeat(image[:, :, None], 3, axis=2) if image.ndim == 2 else image[:, :, :3]
        height, width = rgb.shape[:2]
        scale = min(1.0, self.max_side / max(height, width))
        x = torch.from_numpy(np.array(rgb, dtype=np.float32)).permute(2, 0, 1)[None]
        if scale < 1.0:
            size = (max(1, round(height * scale)), max(1, round(width * scale)))
            x = F.interpolate(x, size=size, mode="area")
        x = (x - 127.5) / 128.0
        boxes, scores = self._propose(x)
        boxes, scores, _ = self._refine(self.rnet, x, boxes, 24, self.thresholds[1])
        boxes = _square(boxes)
        boxes, scores, points = self._refine(self.onet, x, boxes, 48, self.thresholds[2])
        faces = []
        for box, score, marks in zip(boxes / scale, scores, points / scale, strict=True):
            x0, y0 = max(0, math.floor(box[0])), max(0, math.floor(box[1]))
            x1, y1 = min(width, math.ceil(box[2])), min(height, math.ceil(box[3]))
            if x1 > x0 and y1 > y0:
                landmarks = tuple((float(px), float(py)) for px, py in marks.view(5, 2))
                faces.append(Face(x0, y0, x1, y1, float(score), landmarks))
        return sort_faces(faces)

    def _propose(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """P-Net over the image pyramid: candidate squares (detection-image pixels) and scores."""
        height, width = x.shape[-2:]
        found = []
        scale = 12 / self.min_face
        while min(height, width) * scale >= 12:
            size = (math.ceil(height * scale), math.ceil(width * scale))
            prob, offsets = self.pnet(F.interpolate(x, size=size, mode="area"))
            rows, cols = torch.nonzero(prob[0] >= self.thresholds[0], as_tuple=True)
            corner = torch.stack([cols, rows], 1).float() * 2
            boxes = torch.cat([corner, corner + 12], 1) / scale
            scores = prob[0, rows, cols]
            keep = nms(boxes, scores, 0.5)
            found.append((boxes[keep], scores[keep], offsets[0, :, rows, cols].T[keep]))
            scale *= self.scale_step
        if not found:
            return torch.zeros(0, 4), torch.zeros(0)
        boxes, scores, offsets = (torch.cat(parts) for parts in zip(*found, strict=True))
        keep = nms(boxes, scores, 0.7)
        boxes = _regress(boxes[keep], offsets[keep])
        return _square(boxes[keep]), scores[keep]

    def _refine(
        self, net: nn.Module, x: torch.Tensor, boxes: torch.Tensor, side: int, threshold: float
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Re-score `side`-pixel crops of `boxes` with R-Net or O-Net; regress the survivors."""
        if not len(boxes):
            return boxes, torch.zeros(0), torch.zeros(0, 10)
        calls = [
            net(torch.cat([_crop(x, box, side) for box in boxes[i : i + REFINE_BATCH]]))
            for i in range(0, len(boxes), REFINE_BATCH)
        ]
        outputs = [torch.cat(parts) for parts in zip(*calls, strict=True)]
        scores, offsets = outputs[0], outputs[1]
        keep = scores >= threshold
        boxes, scores, offsets = boxes[keep], scores[keep], offsets[keep]
        points = torch.zeros(len(boxes), 10)
        if len(outputs) == 3:  # O-Net's landmarks, relative to the box before regression
            marks = outputs[2][keep]
            size = boxes[:, 2:] - boxes[:, :2]
            xs = boxes[:, :1] + marks[:, :5] * size[:, :1]
            ys = boxes[:, 1:2] + marks[:, 5:] * size[:, 1:]
            points = torch.stack([xs, ys], 2).reshape(-1, 10)
        boxes = _regress(boxes, offsets)
        keep = nms(boxes, scores, 0.7, by="min" if len(outputs) == 3 else "union")
        return boxes[keep], scores[keep], points[keep]


def _crop(x: torch.Tensor, box: torch.Tensor, side: int) -> torch.Tensor:
    """1 x 3 x side x side resample of `box` from `x`; outside the image is black, as in MTCNN."""
    height, width = x.shape[-2:]
    x0, y0, x1, y1 = (round(float(v)) for v in box)
    x1, y1 = max(x1, x0 + 1), max(y1, y0 + 1)
    patch = x.new_full((1, 3, y1 - y0, x1 - x0), -127.5 / 128.0)
    sx0, sy0, sx1, sy1 = max(0, x0), max(0, y0), min(width, x1), min(height, y1)
    if sx1 > sx0 and sy1 > sy0:
        patch[..., sy0 - y0 : sy1 - y0, sx0 - x0 : sx1 - x0] = x[..., sy0:sy1, sx0:sx1]
    return F.interpolate(patch, size=(side, side), mode="area")
