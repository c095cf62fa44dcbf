"""BlazeFace's raw outputs as detections: anchors, box and keypoint decoding, NMS.

Restated from MediaPipe's face-detection graphs (its SSD anchor, tensors-to-detections and
non-max-suppression calculators with the face detector's options), in numpy:

- Anchors: one grid per head, a cell every `stride` input pixels, anchor centres at the cell
  centres ((col + 0.5) / cols, (row + 0.5) / rows), several anchors per cell (2 for the first
  head, 6 for the second: two per SSD layer sharing that stride), all of size 1 x 1 ("fixed
  anchor size"), in row-major cell order, then anchor order within a cell.
- Decoding: the 16 numbers of an anchor are the box centre offset (x, y), the box size (w, h)
  and six keypoints (x, y), all in input pixels; divided by the input size they become
  fractions of the input, offsets added to the anchor centre. Scores are sigmoid(logit), the
  logit clipped to +-100 first.
- Keypoints, as the model card names them: right eye, left eye, nose tip, mouth centre, right
  ear tragion, left ear tragion (the person's right: the image's left in a selfie-less photo).
- NMS: MediaPipe's face detector uses the weighted variant: the best remaining detection and
  every remaining one overlapping it by IoU > threshold form a cluster, which is replaced by
  the score-weighted mean of its boxes and keypoints, with the best detection's score.
  Ordinary NMS (keep the best, drop the overlapping ones) is here too, for comparison.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .net import BlazeSpec

SCORE_CLIP = 100.0
KEYPOINTS = ("right eye", "left eye", "nose tip", "mouth centre", "right ear", "left ear")


@dataclass(frozen=True)
class Detections:
    """Detections in input fractions: boxes N x 4 (x0, y0, x1, y1), keypoints N x 6 x 2."""

    boxes: np.ndarray
    keypoints: np.ndarray
    scores: np.ndarray

    def __len__(self) -> int:
        return len(self.scores)

    def take(self, index: np.ndarray) -> Detections:
        return Detections(self.boxes[index], self.keypoints[index], self.scores[index])


def head_strides(spec: BlazeSpec) -> list[int]:
    """Input pixels per cell of each head's grid: the stem's 2 times the block strides so far."""
    strides = []
    for head in spec.heads:
        stride = 2
        for block in spec.blocks[: head.after + 1]:
            stride *= block.stride
        strides.append(stride)
    return strides


def anchors(spec: BlazeSpec) -> np.ndarray:
    """A x 2 anchor centres (x, y) as fractions of the input, in the network's output order."""
    parts = []
    for head, stride in zip(spec.heads, head_strides(spec), strict=True):
        cells = -(-spec.size // stride)  # ceil: TensorFlow SAME maps
        centres = (np.arange(cells, dtype=np.float64) + 0.5) / cells
        ys, xs = np.meshgrid(centres, centres, indexing="ij")
        grid = np.stack([xs.ravel(), ys.ravel()], 1)
        parts.append(np.repeat(grid, head.anchors, axis=0))
    return np.concatenate(parts).astype(np.float32)


def decode(
    scores: np.ndarray, regressors: np.ndarray, centres: np.ndarray, size: int, threshold: float
) -> Detections:
    """One image's raw outputs (A logits, A x 16) as the detections scoring >= threshold."""
    probability = 1.0 / (1.0 + np.exp(-np.clip(scores.astype(np.float64), -SCORE_CLIP, SCORE_CLIP)))
    keep = np.flatnonzero(probability >= threshold)
    raw = regressors[keep].astype(np.float64) / size
    centre = raw[:, :2] + centres[keep]
    half = raw[:, 2:4] / 2
    boxes = np.concatenate([centre - half, centre + half], 1)
    keypoints = raw[:, 4:16].reshape(-1, 6, 2) + centres[keep][:, None, :]
    return Detections(boxes, keypoints, probability[keep])


def iou(box: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """Intersection over union of one box with each of `boxes` (0 where they do not meet)."""
    low = np.maximum(box[:2], boxes[:, :2])
    high = np.minimum(box[2:], boxes[:, 2:])
    inter = np.clip(high - low, 0, None).prod(1)
    area = (box[2:] - box[:2]).prod()
    areas = (boxes[:, 2:] - boxes[:, :2]).prod(1)
    union = area + areas - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1), 0.0)


def weighted_nms(found: Detections, threshold: float) -> Detections:
    """MediaPipe's weighted NMS: each cluster becomes its score-weighted mean, best score."""
    order = np.argsort(-found.scores, kind="stable")
    boxes, points, scores = [], [], []
    while len(order):
        best = order[0]
        overlap = iou(found.boxes[best], found.boxes[order]) > threshold
        overlap[0] = True  # the best detection belongs to its own cluster
        cluster, order = order[overlap], order[~overlap]
        weights = found.scores[cluster] / found.scores[cluster].sum()
        boxes.append(weights @ found.boxes[cluster])
        points.append(np.tensordot(weights, found.keypoints[cluster], axes=1))
        scores.append(found.scores[best])
    if not scores:
        return found
    return Detections(np.stack(boxes), np.stack(points), np.asarray(scores))


def plain_nms(found: Detections, threshold: float) -> Detections:
    """Greedy NMS: keep the best remaining detection, drop those overlapping it by IoU > t."""
    order = np.argsort(-found.scores, kind="stable")
    keep = []
    while len(order):
        keep.append(order[0])
        order = order[1:][iou(found.boxes[order[0]], found.boxes[order[1:]]) <= threshold]
    return found.take(np.asarray(keep, dtype=np.int64))
