"""`ExpressionRecognizer`: images in, one typed result per face out.

Pipeline: image -> RGB uint8 -> faces (Haar or MTCNN detector, given boxes, or the whole image)
-> square crops from the full-resolution image (optionally eye-aligned) -> the model's own
preprocessing (from its model card) -> logits (PyTorch or ONNX Runtime) -> probabilities at
the chosen operating point (`qcsfer.decision`). Faces of several images are classified in
shared batches.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..card import ModelCard
from ..imaging import Color, ImageInput, describe, to_rgb_array
from ..preprocessing import Preprocessing
from .backends import LoadedModel, load_backend
from .detectors import make_detector
from .faces import DEFAULT_MARGIN, Detector, Face, crop_face, given_box, whole_image
from .model_input import stack_crops
from .results import ImageResult, Prediction, add_predictions
from .video import VideoAnalysis


@dataclass
class _Pending:
    result: ImageResult
    faces: list[Face]
    batch: np.ndarray  # uint8 F x C x L x L


class ExpressionRecognizer:
    """Facial expression recognition on whole photos, pre-cropped faces or video frames.

    model: "default" (the shipped model), a weights file, a run directory or an exported .onnx
    file. backend: "torch", "onnx" or "auto" (ONNX Runtime for .onnx files, else PyTorch).
    detect=False treats each whole image as one face (like FERPlus crops). detector: "auto"
    (MTCNN if its weights are installed, else Haar alt2), "mtcnn", a Haar cascade name, or a
    detector object; align: level the eyes of faces with landmarks (MTCNN) before classifying
    them; margin: added around detected or given boxes on each side, as a fraction of the box
    (None: the detector's own `margin`, measured to match the training faces' framing);
    threads: ONNX Runtime threads (None: its default). prior: "dataset" (the training set's
    class prior kept) or "balanced" (every class weighted equally); None: the model's default
    operating point (`qcsfer.decision`).
    """

    def __init__(
        self,
        model: str | os.PathLike[str] | LoadedModel = "default",
        backend: str = "auto",
        device: str = "cpu",
        detect: bool = True,
        *,
        detector: str | Detector = "auto",
        align: bool = False,
        margin: float | None = None,
        batch_size: int = 64,
        threads: int | None = None,
        prior: str | None = None,
    ) -> None:
        if batch_size < 1:
            raise ValueError("batch_size must be >= 1")
        if margin is not None and margin <= -0.5:
            raise ValueError("margin must be > -0.5 (a negative margin trims the box)")
        loaded = load_backend(model, backend, device, threads)
        self.backend = loaded.backend
        self.card: ModelCard = loaded.card  # classes, preprocessing, decision rule, metrics
        self.classes: list[str] = list(loaded.card.classes)
        self.decision = self.card.decision
        self.decision.point(prior)  # an unknown prior, or balanced without a training prior
        self.prior = prior or self.decision.default
        self.detect = detect
        self.detector: Detector | None = None
        if detect:
            self.detector = make_detector(detector) if isinstance(detector, str) else detector
        self.align = align
        self._margin = margin
        self.batch_size = batch_size

    @property
    def margin(self) -> float:
        """The margin given, else the detector's own (it follows a detector swapped in later)."""
        return (
            getattr(self.detector, "margin", DEFAULT_MARGIN)
            if self._margin is None
            else self._margin
        )

    @property
    def preprocessing(self) -> Preprocessing:
        """The model's preprocessing (sizes, gray, mean/std), from its card."""
        return self.backend.preprocessing

    # -- single image ------------------------------------------------------------------------

    def __call__(
        self,
        image: ImageInput,
        *,
        color: Color = "rgb",
        boxes: Sequence[Sequence[float]] | None = None,
    ) -> list[Prediction]:
        """Predictions for every face in one image; [] when it has none.

        Raises ImageError (a ValueError) when the input cannot be read as an image.
        """
        result = self.predict_frame(image, source=describe(image), color=color, boxes=boxes)
        return result.predictions

    def predict_frame(
        self,
        image: ImageInput,
        *,
        source: str,
        frame: int | None = None,
        color: Color = "rgb",
        boxes: Sequence[Sequence[float]] | None = None,
        keep_image: bool = False,
    ) -> ImageResult:
        """One image (or a frame of a stream) as an ImageResult, labelled with source and frame
        so the caller's rows carry them; raises ImageError if unreadable."""
        pending = self._prepare(image, color, boxes, source, frame, keep_image)
        self._classify([pending])
        return pending.result

    # -- many images -------------------------------------------------------------------------

    def predict_many(
        self,
        images: Iterable[ImageInput],
        *,
        color: Color = "rgb",
        boxes: Sequence[Sequence[float]] | None = None,
    ) -> list[ImageResult]:
        """One ImageResult per input, in order; unreadable inputs carry `error` instead."""
        return list(self.iter_predictions(images, color=color, boxes=boxes))

    def iter_predictions(
        self,
        images: Iterable[ImageInput],
        *,
        color: Color = "rgb",
        boxes: Sequence[Sequence[float]] | None = None,
        keep_images: bool = False,
    ) -> Iterator[ImageResult]:
        """Stream of ImageResults in input order; faces are batched across images."""
        pending: list[_Pending] = []
        waiting = 0
        for image in images:
            source = describe(image)
            try:
                item = self._prepare(image, color, boxes, source, None, keep_images)
            except ValueError as exc:  # unreadable (ImageError) or a box outside this image
                empty = stack_crops([], self.preprocessing)
                item = _Pending(ImageResult(source, error=str(exc)), [], empty)
            pending.append(item)
            waiting += len(item.faces)
            if waiting >= self.batch_size:
                self._classify(pending)
                yield from (p.result for p in pending)
                pending, waiting = [], 0
        if pending:
            self._classify(pending)
            yield from (p.result for p in pending)

    def video(self, source: str | os.PathLike[str], **options: Any) -> VideoAnalysis:
        """Tracked faces with smoothed expressions, frame by frame, in a video file or a camera
        ("webcam:0"): iterate to get VideoFrames. Options (every, fps, start, end, tau, ...) as
        for VideoAnalysis."""
        return VideoAnalysis(self, source, **options)

    # -- steps -------------------------------------------------------------------------------

    def find_faces(
        self, rgb: np.ndarray, boxes: Sequence[Sequence[float]] | None = None
    ) -> list[Face]:
        """Given boxes if any, else detected faces, else (detect=False) the whole image."""
        height, width = rgb.shape[:2]
        if boxes is not None:
            return [given_box(box, width, height) for box in boxes]
        if self.detector is None:
            return [whole_image(width, height)]
        return self.detector.detect(rgb)

    def crops(self, rgb: np.ndarray, faces: list[Face], given: bool = False) -> list[np.ndarray]:
        """Square face crops with the margin; without detection, the whole image unchanged.

        The whole image is passed on as it is, not squared: training resizes its face images
        to load_size x load_size whatever their shape, and so does inference then.
        """
        if self.detector is None and not given:
            return [rgb]
        return [crop_face(rgb, face, self.margin, self.align) for face in faces]

    def logits(self, batch: np.ndarray) -> np.ndarray:
        """uint8 B x C x L x L face batch -> B x K logits, `batch_size` faces per model call."""
        if len(batch) == 0:
            return np.zeros((0, len(self.classes)), dtype=np.float32)
        size = self.batch_size
        return np.concatenate(
            [self.backend.logits(batch[i : i + size]) for i in range(0, len(batch), size)]
        )

    def probabilities(self, batch: np.ndarray) -> np.ndarray:
        """uint8 B x C x L x L face batch -> B x K class probabilities (float64)."""
        return self.decision.probabilities(self.logits(batch), self.prior).astype(np.float64)

    def _prepare(
        self,
        image: ImageInput,
        color: Color,
        boxes: Sequence[Sequence[float]] | None,
        source: str,
        frame: int | None,
        keep_image: bool,
    ) -> _Pending:
        rgb = to_rgb_array(image, color)
        try:
            faces = self.find_faces(rgb, boxes)
        except ValueError as exc:  # a given box outside this image: say which image
            raise ValueError(f"{source}: {exc}") from exc
        crops = self.crops(rgb, faces, boxes is not None)
        result = ImageResult(source, width=rgb.shape[1], height=rgb.shape[0], frame=frame)
        if keep_image:
            result.image = rgb
        return _Pending(result, faces, stack_crops(crops, self.preprocessing))

    def _classify(self, pending: list[_Pending]) -> None:
        batches = [p.batch for p in pending if len(p.faces)]
        if not batches:
            return
        probs = self.probabilities(np.concatenate(batches))
        add_predictions([(p.result, p.faces) for p in pending], probs, self.classes)
