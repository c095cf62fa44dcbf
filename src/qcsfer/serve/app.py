"""The FastAPI application: routes, bearer token, CORS, request ids, access log, JSON errors."""

from __future__ import annotations

import hmac
import io
import json
import logging
import re
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from importlib import resources
from typing import Annotated, Any

from fastapi import Depends, FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import HTMLResponse, JSONResponse, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from PIL import Image
from starlette.exceptions import HTTPException

from .. import __version__
from ..inference.annotate import annotate
from ..inference.recognizer import ExpressionRecognizer
from .admission import Deadline, within
from .errors import ApiError, error_body
from .hosts import HostPolicy, add_host_check
from .options import PredictOptions, describe_validation
from .service import InferenceService, Outcome, model_description
from .settings import ServeSettings

access_log = logging.getLogger("qcsfer.serve.access")
log = logging.getLogger("qcsfer.serve")
REQUEST_ID = re.compile(r"[A-Za-z0-9._-]{1,64}")
PAGE_POLICY = (
    "default-src 'self'; img-src 'self' blob: data:; media-src 'self' blob: mediastream:; "
    "style-src 'self' 'unsafe-inline'; script-src 'self' 'unsafe-inline'; frame-ancestors 'none'"
)
PREDICT_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "properties": {
                        "images": {"type": "array", "items": {"type": "string", "format": "binary"}}
                    },
                    "required": ["images"],
                }
            },
            "application/json": {
                "schema": {
                    "type": "object",
                    "properties": {
                        "images": {
                            "type": "array",
                            "items": {
                                "type": "object",
                                "properties": {
                                    "name": {"type": "string"},
                                    "data": {"type": "string", "format": "base64"},
                                },
                                "required": ["data"],
                            },
                        }
                    },
                    "required": ["images"],
                }
            },
        },
    }
}


BEARER = HTTPBearer(auto_error=False, description="needed when the server has a token")


def authorized(
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(BEARER)],
) -> None:
    """Let the request in when the server has no token or it sent the right one."""
    token = request.app.state.settings.token
    if token is None:
        return
    given = credentials.credentials if credentials else ""
    if not hmac.compare_digest(given.encode(), token.encode()):
        raise ApiError(
            401,
            "unauthorized",
            "this server needs 'Authorization: Bearer TOKEN'",
            headers={"WWW-Authenticate": "Bearer"},
        )


def current_service(request: Request) -> InferenceService:
    """The running service (routes take it through Depends); 503 until the model is loaded."""
    service = getattr(request.app.state, "service", None)
    if service is None or not service.ready:
        raise ApiError(503, "not_ready", "the model is not loaded yet")
    return service


Service = Annotated[InferenceService, Depends(current_service)]


def static_text(name: str) -> str:
    return (resources.files("qcsfer.serve") / "static" / name).read_text(encoding="utf-8")


def load_recognizer(settings: ServeSettings) -> ExpressionRecognizer:
    """The model the settings name (ValueError/FileNotFoundError when it cannot be loaded)."""
    return ExpressionRecognizer(
        settings.model,
        backend=settings.backend,
        device=settings.device,
        threads=settings.threads,
        prior=settings.prior,
        **({"detector": settings.detector} if settings.detector else {}),
    )


def create_app(settings: ServeSettings, recognizer: ExpressionRecognizer | None = None) -> FastAPI:
    """The application; loads the model at start-up unless a recognizer is given (tests)."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        loaded = recognizer or load_recognizer(settings)
        service = InferenceService(loaded, settings)
        app.state.service = service
        service.warm_up()
        log.info("model %s ready (%s)", settings.model, type(loaded.backend).__name__)
        try:
            yield
        finally:
            service.close()

    app = FastAPI(
        title="qcsfer",
        version=__version__,
        description="Facial expressions of the faces in images (QCS, AAAI 2025).",
        docs_url=None,  # the stock pages load scripts from a CDN; ours works offline
        redoc_url=None,
        lifespan=lifespan,
    )
    if settings.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=list(settings.cors_origins),
            allow_methods=["GET", "POST"],
            allow_headers=["Authorization", "Content-Type", "X-Request-Id"],
            expose_headers=["X-Request-Id", "Retry-After"],
        )
    add_host_check(app, HostPolicy(settings.host, settings.allowed_hosts))
    _add_access_log(app)  # added last: the outermost, so it logs refused hosts too
    _add_error_handlers(app)
    app.state.settings = settings
    page, docs = static_text("index.html"), static_text("docs.html")

    @app.get("/", include_in_schema=False)
    async def index() -> HTMLResponse:
        return HTMLResponse(page, headers={"Content-Security-Policy": PAGE_POLICY})

    @app.get("/docs", include_in_schema=False)
    async def api_docs() -> HTMLResponse:
        return HTMLResponse(docs, headers={"Content-Security-Policy": PAGE_POLICY})

    @app.get("/healthz", summary="the process is up")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz", summary="the model is loaded and a request would be admitted now")
    async def readyz(service: Service) -> dict[str, Any]:
        if service.pending >= settings.max_pending:  # what /v1/predict would answer now
            raise ApiError(503, "busy", f"all {settings.max_pending} places are taken")
        return {
            "status": "ready",
            "pending": service.pending,
            "max_pending": settings.max_pending,
            "receiving": service.readers.count,  # bodies arriving; they hold no place
        }

    @app.get("/v1/model", dependencies=[Depends(authorized)], summary="the loaded model")
    async def model(service: Service) -> dict[str, Any]:
        return model_description(service)

    @app.post(
        "/v1/predict",
        dependencies=[Depends(authorized)],
        summary="expressions of every face in one or more images",
        openapi_extra=PREDICT_BODY,
    )
    async def predict(
        request: Request, service: Service, options: Annotated[PredictOptions, Query()]
    ) -> Response:
        deadline = Deadline(settings.timeout_s)  # covers the body's arrival too
        body = await service.readers.read(request, settings.max_body_bytes, deadline)
        content_type = request.headers.get("content-type", "")
        with service.admit():  # only now: a slow sender holds no place
            outcome, options = await within(deadline, service.run(body, content_type, options))
            request.state.timing = _timing(outcome)
            if options.annotated:
                fmt = options.annotated_format
                return await within(deadline, service.in_pool(_annotated_image, outcome, fmt))
        recognizer = service.recognizer
        document = _document(outcome, options, recognizer.classes, recognizer.prior)
        document["request_id"] = request.state.request_id
        return JSONResponse(document)

    return app


def _timing(outcome: Outcome) -> dict[str, Any]:
    batch = outcome.batch
    return {
        "images": len(outcome.images),
        "faces": sum(len(i.result.predictions) for i in outcome.images),
        "prepare_ms": round(outcome.prepare_ms, 2),
        "queue_ms": round(batch.queue_ms, 2) if batch else 0.0,
        "model_ms": round(batch.model_ms, 2) if batch else 0.0,
        "batch_requests": batch.requests if batch else 0,
        "batch_faces": batch.faces if batch else 0,
    }


def _document(
    outcome: Outcome, options: PredictOptions, classes: list[str], default_prior: str
) -> dict[str, Any]:
    """`qcsfer predict --format json`'s document, plus each image's status and the timing;
    `prior` names the operating point applied (the model's default unless asked)."""
    results = []
    for item in outcome.images:
        record = item.result.to_dict()
        record["status"] = item.status
        if options.top_k:
            for face in record["faces"]:
                ranked = sorted(face["probabilities"].items(), key=lambda kv: -kv[1])
                face["top"] = [{"label": c, "probability": p} for c, p in ranked[: options.top_k]]
        results.append(record)
    return {
        "classes": classes,
        "prior": options.prior or default_prior,
        "results": results,
        "summary": {
            "images": sum(i.status != "unreadable" for i in outcome.images),
            "faces": sum(len(i.result.predictions) for i in outcome.images),
            "without_face": sum(i.status == "no_face" for i in outcome.images),
            "unreadable": [i.result.source for i in outcome.images if i.status == "unreadable"],
        },
        "timing": _timing(outcome),
    }


def _annotated_image(outcome: Outcome, fmt: str) -> Response:
    """The image with its faces drawn on (seconds for a large one: run in the prepare pool)."""
    item = outcome.images[0]
    if item.rgb is None:
        raise ApiError(422, item.status, item.result.error or "no image to draw on")
    buffer = io.BytesIO()
    Image.fromarray(annotate(item.rgb, item.result.predictions)).save(buffer, fmt.upper())
    headers = {"X-Qcsfer-Faces": str(len(item.result.predictions))}
    return Response(buffer.getvalue(), media_type=f"image/{fmt}", headers=headers)


def _error(request: Request, exc: ApiError) -> JSONResponse:
    request_id = getattr(request.state, "request_id", None)
    body = error_body(exc.code, exc.message, request_id)
    return JSONResponse(body, status_code=exc.status, headers=exc.headers)


def _add_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def api_error(request: Request, exc: ApiError) -> JSONResponse:
        return _error(request, exc)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        return _error(request, ApiError(422, "invalid_options", describe_validation(exc.errors())))

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException) -> JSONResponse:
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        return _error(request, ApiError(exc.status_code, code, str(exc.detail), exc.headers))


def _add_access_log(app: FastAPI) -> None:
    """Request id (the client's X-Request-Id if sane, else new) and one JSON log line each."""

    @app.middleware("http")
    async def log_requests(request: Request, call_next: Any) -> Response:
        given = request.headers.get("x-request-id", "")
        request_id = given if REQUEST_ID.fullmatch(given) else uuid.uuid4().hex
        request.state.request_id = request_id
        start = time.perf_counter()
        try:
            response = await call_next(request)
        except Exception:  # an unexpected bug: logged with its traceback, answered as JSON
            log.exception("request %s failed", request_id)
            error = ApiError(500, "internal_error", "internal error; see the server log")
            response = _error(request, error)
        response.headers["X-Request-Id"] = request_id
        response.headers["X-Content-Type-Options"] = "nosniff"
        record = {
            "request_id": request_id,
            "client": request.client.host if request.client else None,
            "method": request.method,
            "path": request.url.path,
            "status": response.status_code,
            "ms": round((time.perf_counter() - start) * 1000, 2),
            **getattr(request.state, "timing", {}),
        }
        access_log.info(json.dumps(record))
        return response
