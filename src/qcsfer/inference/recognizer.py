"""`ExpressionRecognizer`: images in, one typed result per face out; the one owner of the
face pipeline.

`prepare`: image -> RGB uint8 -> faces (a detector, given boxes, or the whole image) -> square
crops from the full-resolution image (optionally eye-aligned) -> the model's decoded input
(`FaceBatch`). `classify`: FaceBatches -> logits (PyTorch or ONNX Runtime, or rows computed
elsewhere) -> probabilities at the chosen operating point (`qcsfer.decision`) -> Predictions.
Photos, video frames, `qcsfer serve` and `qcsfer explain` all go through these two steps; faces
of several images are classified in shared batches (`in_batches`).
"""

from __future__ import annotations

import enum
import os
import threading
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import numpy as np

from ..card import ModelCard
from ..errors import QcsferError, UsageError
from ..imaging import Color, ImageInput, describe, to_rgb_array
from ..preprocessing import Preprocessing
from .backends import LoadedModel, load_backend
from .detectors import make_detector
from .faces import DEFAULT_MARGIN, Detector, crop_face, given_box, whole_image
from .model_input import FaceBatch, in_batches, stack_crops
from .results import ImageResult, Prediction
from .video import VideoAnalysis


class _Own(enum.Enum):
    DETECTOR = enum.auto()  # `prepare(detector=...)` left out: the recognizer's own


OWN = _Own.DETECTOR


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
            raise UsageError("batch_size must be >= 1")
        if margin is not None and margin <= -0.5:
            raise UsageError("margin must be > -0.5 (a negative margin trims the box)")
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
        self._named = threading.local()  # detectors by name, per thread (see `_detector`)

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

    # -- the pipeline ------------------------------------------------------------------------

    def prepare(
        self,
        image: ImageInput,
        *,
        color: Color = "rgb",
        boxes: Sequence[Sequence[float]] | None = None,
        detector: str | Detector | _Own | None = OWN,
        margin: float | None = None,
        max_faces: int | None = None,
        keep_crops: bool = False,
    ) -> FaceBatch:
        """One image's faces, cropped and decoded for the model; nothing is classified yet.

        Faces: the given boxes, else those `detector` finds (left out: the recognizer's own; a
        name: that detector, one per thread; None: none, the whole image is the face); margin:
        around each box (None: the recognizer's, else the detector's own). Raises
        ImageError for an unreadable image, UsageError for a box outside it, TooManyFaces past
        `max_faces` (before any crop is made), UsageError for a detector name that cannot load.
        """
        rgb = to_rgb_array(image, color)
        height, width = rgb.shape[:2]
        finder = self._detector(detector)
        if boxes is not None:
            faces = [given_box(box, width, height) for box in boxes]
        elif finder is None:
            faces = [whole_image(width, height)]
        else:
            faces = finder.detect(rgb)
        if max_faces is not None and len(faces) > max_faces:
            raise TooManyFaces(f"{len(faces)} faces found; the limit is {max_faces} per image")
        if finder is None and boxes is None:
            # The whole image as it is, not squared: training resizes its face images to
            # load_size x load_size whatever their shape, and so does inference then.
            crops = [rgb]
        else:
            if margin is None:
                margin = self._margin
            if margin is None:
                margin = getattr(finder, "margin", DEFAULT_MARGIN)
            crops = [crop_face(rgb, face, margin, self.align) for face in faces]
        inputs = stack_crops(crops, self.preprocessing)
        return FaceBatch(faces, inputs, width, height, crops if keep_crops else [])

    def classify(
        self,
        batches: Sequence[FaceBatch],
        prior: str | None = None,
        logits: np.ndarray | None = None,
    ) -> list[list[Prediction]]:
        """The Predictions of each batch's faces, all faces in one pass of the model.

        prior: the operating point (None: the recognizer's). logits: these faces' rows when they
        were computed elsewhere (the server's shared batches, explain's attention pass).
        """
        if logits is None:
            inputs = [batch.inputs for batch in batches if len(batch)]
            empty = np.zeros((0, len(self.classes)), np.float32)
            logits = self.logits(np.concatenate(inputs)) if inputs else empty
        total = sum(len(batch) for batch in batches)
        if len(logits) != total:
            raise ValueError(f"{len(logits)} rows of logits for {total} faces")
        probs = self.decision.probabilities(logits, prior or self.prior).astype(np.float64)
        out, row = [], 0
        for batch in batches:
            rows = probs[row : row + len(batch)]
            row += len(batch)
            out.append(
                [
                    Prediction.from_probabilities(face, p, self.classes)
                    for face, p in zip(batch.faces, rows, strict=True)
                ]
            )
        return out

    def logits(self, batch: np.ndarray) -> np.ndarray:
        """uint8 B x C x L x L face batch -> B x K logits, `batch_size` faces per model call."""
        if len(batch) == 0:
            return np.zeros((0, len(self.classes)), dtype=np.float32)
        size = self.batch_size
        return np.concatenate(
            [self.backend.logits(batch[i : i + size]) for i in range(0, len(batch), size)]
        )

    # -- whole images --------------------------------------------------------------------------

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
        result, batch = self._read(image, source, color, boxes, keep_image, frame)
        self._label([(result, batch)])
        return result

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

        def read(image: ImageInput) -> tuple[ImageResult, FaceBatch | None]:
            source = describe(image)
            try:
                return self._read(image, source, color, boxes, keep_images)
            except ValueError as exc:  # unreadable (ImageError) or a box outside this image
                return ImageResult(source, error=str(exc)), None

        def faces(item: tuple[ImageResult, FaceBatch | None]) -> int:
            return 0 if item[1] is None else len(item[1])

        for group in in_batches(map(read, images), faces, self.batch_size):
            self._label(group)
            yield from (result for result, _ in group)

    def video(self, source: str | os.PathLike[str], **options: Any) -> VideoAnalysis:
        """Tracked faces with smoothed expressions, frame by frame, in a video file or a camera
        ("webcam:0"): iterate to get VideoFrames. Options (every, fps, start, end, tau, ...) as
        for VideoAnalysis."""
        return VideoAnalysis(self, source, **options)

    # -- helpers -------------------------------------------------------------------------------

    def _read(
        self,
        image: ImageInput,
        source: str,
        color: Color,
        boxes: Sequence[Sequence[float]] | None,
        keep_image: bool,
        frame: int | None = None,
    ) -> tuple[ImageResult, FaceBatch]:
        rgb = to_rgb_array(image, color)
        try:
            batch = self.prepare(rgb, boxes=boxes)
        except QcsferError as exc:  # a given box outside this image: say which image
            raise type(exc)(f"{source}: {exc}") from exc
        result = ImageResult(source, width=batch.width, height=batch.height, frame=frame)
        if keep_image:
            result.image = rgb
        return result, batch

    def _label(self, items: Sequence[tuple[ImageResult, FaceBatch | None]]) -> None:
        read = [(result, batch) for result, batch in items if batch is not None]
        predictions = self.classify([batch for _, batch in read])
        for (result, _), found in zip(read, predictions, strict=True):
            result.predictions.extend(found)

    def _detector(self, detector: str | Detector | _Own | None) -> Detector | None:
        """The detector `prepare` was asked for. Names are made once per thread: OpenCV
        cascades are not safe to share between threads (`qcsfer serve` prepares in several)."""
        if detector is OWN:
            return self.detector
        if not isinstance(detector, str):
            return detector
        made: dict[str, Detector] = self._named.__dict__.setdefault("by_name", {})
        if detector not in made:
            try:
                made[detector] = make_detector(detector)
            except (ImportError, FileNotFoundError, ValueError) as exc:
                raise DetectorUnavailable(f"detector {detector!r}: {exc}") from exc
        return made[detector]


class TooManyFaces(UsageError):
    """More faces in one image than the caller accepts (`prepare(max_faces=...)`)."""


class DetectorUnavailable(UsageError):
    """A detector asked for by name that cannot be made here (unknown, weights missing)."""
