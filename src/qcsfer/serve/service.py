"""The work behind /v1/predict: admit, decode, find faces, classify in shared batches, report.

Decoding and `ExpressionRecognizer.prepare` (faces, crops) run in a bounded thread pool (the
recognizer makes named detectors once per thread); the model runs in the `FaceBatcher`'s
threads, and `ExpressionRecognizer.classify` turns each request's rows into Predictions at
its prior. At most `max_pending` requests are inside at once; the next one is
told to come back later (503, Retry-After) rather than queued without limit. A request is
admitted once its body has arrived (`admission.py`), so slow senders hold no place.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np

from ..decision import PRIORS
from ..imaging import ImageError, ImageTooLarge, decode_image
from ..inference.model_input import FaceBatch
from ..inference.recognizer import DetectorUnavailable, ExpressionRecognizer, TooManyFaces
from ..inference.results import ImageResult
from .admission import BodyReaders
from .batching import BatchInfo, FaceBatcher
from .errors import ApiError
from .options import PredictOptions
from .settings import ServeSettings
from .uploads import DECODE_FORMATS, Upload, parse_body

T = TypeVar("T")


@dataclass
class PreparedImage:
    """One uploaded image after decoding and face finding, before classification."""

    result: ImageResult
    status: str  # ok, no_face, unreadable, too_many_faces, box_outside
    faces: FaceBatch | None = None
    rgb: np.ndarray | None = None


@dataclass
class Outcome:
    """A request's results, with where its time went."""

    images: list[PreparedImage]
    prepare_ms: float
    batch: BatchInfo | None


class InferenceService:
    def __init__(self, recognizer: ExpressionRecognizer, settings: ServeSettings) -> None:
        self.recognizer = recognizer
        self.settings = settings
        self.default_detector = settings.detector or getattr(recognizer.detector, "name", "alt2")
        self.pending = 0  # admitted requests; changed on the event loop only
        self.readers = BodyReaders()  # requests whose body is arriving (not admitted yet)
        self._prepare_pool = ThreadPoolExecutor(settings.workers, "qcsfer-prepare")
        self.batcher = FaceBatcher(
            recognizer.logits,  # logits only: each request applies its own prior to its rows
            workers=settings.workers,
            window_s=settings.batch_window_ms / 1000,
            max_faces=settings.max_batch_faces,
            expected=lambda: self.pending,
        )
        self.ready = False

    def warm_up(self) -> None:
        """One forward pass of the largest batch the model will run, before saying ready.

        The first client does not pay for it, and the model's working memory for that batch is
        claimed now (the allocator keeps it for reuse): resident memory at ready is what the
        server holds under load, instead of climbing to it the first time many faces arrive at
        once (docs/benchmarks.md, "Serving under load").
        """
        prep = self.recognizer.preprocessing
        shape = (self.largest_batch(), prep.channels, prep.load_size, prep.load_size)
        self.batcher.submit(np.zeros(shape, np.uint8)).result()
        self.ready = True

    def largest_batch(self) -> int:
        """Faces in the largest model call: a shared batch or one request, in model chunks."""
        limits = self.settings
        largest_request = limits.max_images * limits.max_faces
        return min(self.recognizer.batch_size, max(limits.max_batch_faces, largest_request))

    def close(self) -> None:
        self.ready = False
        self._prepare_pool.shutdown(wait=True, cancel_futures=True)
        self.batcher.close()

    @contextlib.contextmanager
    def admit(self) -> Iterator[None]:
        """Hold a place for one request, or refuse it with 503 when all are taken."""
        if self.pending >= self.settings.max_pending:
            raise ApiError(
                503,
                "busy",
                f"the server is at capacity ({self.settings.max_pending} requests in "
                "progress); retry shortly",
                headers={"Retry-After": str(self.settings.retry_after_s)},
            )
        self.pending += 1
        try:
            yield
        finally:
            self.pending -= 1

    async def in_pool(self, work: Callable[..., T], *args: Any) -> T:
        """`work(*args)` in the prepare pool: CPU-heavy steps (parsing a large body, drawing
        on a large image) off the event loop, so /healthz and other requests keep answering."""
        return await asyncio.get_running_loop().run_in_executor(self._prepare_pool, work, *args)

    async def run(
        self, body: bytes, content_type: str, options: PredictOptions
    ) -> tuple[Outcome, PredictOptions]:
        """A request body's results and its options (query merged with the body's fields).

        The caller puts this under the request's deadline (`admission.within`).
        """
        parsed = await self.in_pool(parse_body, body, content_type, self.settings.max_images)
        options = options.merged(parsed.fields)
        if options.annotated and len(parsed.uploads) != 1:
            raise ApiError(400, "bad_request", "annotated=true takes exactly one image")
        return await self.predict(parsed.uploads, options), options

    async def predict(self, uploads: list[Upload], options: PredictOptions) -> Outcome:
        """Results for every upload (the caller bounds the time)."""
        try:
            self.recognizer.decision.point(options.prior)
        except ValueError as exc:  # balanced, for a model without its training prior
            raise ApiError(422, "prior_unavailable", str(exc)) from exc
        loop = asyncio.get_running_loop()
        start = time.perf_counter()
        boxes = options.box_list()
        if boxes is not None and len(boxes) > self.settings.max_faces:
            raise ApiError(
                413, "too_many_faces", f"{len(boxes)} boxes; the limit is {self.settings.max_faces}"
            )
        prepared = await asyncio.gather(
            *(
                loop.run_in_executor(self._prepare_pool, self._prepare, u, options, boxes)
                for u in uploads
            )
        )
        prepare_ms = (time.perf_counter() - start) * 1000
        with_faces = [p for p in prepared if p.faces is not None and len(p.faces)]
        if not with_faces:
            return Outcome(list(prepared), prepare_ms, None)
        batches = [p.faces for p in with_faces if p.faces is not None]
        future = self.batcher.submit(np.concatenate([batch.inputs for batch in batches]))
        logits, batch = await asyncio.wrap_future(future)
        found = self.recognizer.classify(batches, options.prior, logits)
        for item, predictions in zip(with_faces, found, strict=True):
            item.result.predictions.extend(predictions)
        return Outcome(list(prepared), prepare_ms, batch)

    def _prepare(
        self, upload: Upload, options: PredictOptions, boxes: list | None
    ) -> PreparedImage:
        """Decode one upload and find and crop its faces (runs in the prepare pool)."""
        limits = self.settings
        try:
            image = decode_image(
                upload.data, upload.name, max_pixels=limits.max_pixels, formats=DECODE_FORMATS
            )
        except ImageTooLarge as exc:
            raise ApiError(413, "image_too_large", str(exc)) from exc
        except ImageError as exc:
            return PreparedImage(ImageResult(upload.name, error=str(exc)), "unreadable")
        rgb = np.asarray(image, dtype=np.uint8)
        height, width = rgb.shape[:2]
        result = ImageResult(upload.name, width=width, height=height)
        try:
            faces = self.recognizer.prepare(
                rgb, boxes=boxes, detector=self._detector_name(options), max_faces=limits.max_faces
            )
        except DetectorUnavailable as exc:
            raise ApiError(422, "detector_unavailable", str(exc)) from exc
        except TooManyFaces as exc:
            result.error = str(exc)
            return PreparedImage(result, "too_many_faces")
        except ValueError as exc:  # a given box outside this image
            result.error = f"{upload.name}: {exc}"
            return PreparedImage(result, "box_outside")
        keep = rgb if options.annotated else None
        return PreparedImage(result, "ok" if len(faces) else "no_face", faces, keep)

    def _detector_name(self, options: PredictOptions) -> str | None:
        """The detector a request asked for, else the server's; None: no detection."""
        if options.detector is not None:
            return options.detector
        if options.no_detect or not self.recognizer.detect:
            return None
        return self.default_detector


def available_priors(recognizer: ExpressionRecognizer) -> list[str]:
    """The priors (`qcsfer.decision`) this model can apply."""
    available = []
    for prior in PRIORS:
        try:
            recognizer.decision.point(prior)
        except ValueError:
            continue
        available.append(prior)
    return available


def model_description(service: InferenceService) -> dict[str, Any]:
    """What /v1/model tells: classes, preprocessing, provenance, accuracy, limits, batching."""
    recognizer, settings = service.recognizer, service.settings
    card = recognizer.card
    return {
        "model": settings.model,
        "backend": type(recognizer.backend).__name__,
        "classes": recognizer.classes,
        "preprocessing": recognizer.preprocessing.to_dict(),
        "provenance": dict(card.provenance),
        "metrics": dict(card.metrics),
        "detector": service.default_detector if recognizer.detect else None,
        "prior": {"default": recognizer.prior, "available": available_priors(recognizer)},
        "limits": {
            "max_body_bytes": settings.max_body_bytes,
            "max_pixels": settings.max_pixels,
            "max_images": settings.max_images,
            "max_faces": settings.max_faces,
            "timeout_s": settings.timeout_s,
        },
        "batching": {
            "workers": settings.workers,
            "threads": settings.threads,
            "window_ms": settings.batch_window_ms,
            "max_batch_faces": settings.max_batch_faces,
            "max_pending": settings.max_pending,
            "requests_per_batch": dict(sorted(service.batcher.batch_sizes.items())),
        },
    }
