"""Request bodies into images, all in memory: multipart uploads or JSON with base64 images.

Nothing is spooled to disk (Starlette's form parser would move large uploads to a temporary
file), and every limit is checked before the work it guards: the body size while it arrives,
the image count after parsing, the pixel count from each image's header before decoding.
"""

from __future__ import annotations

import base64
import binascii
import json
from dataclasses import dataclass, field
from typing import Any

from python_multipart import MultipartParser
from python_multipart.exceptions import MultipartParseError
from python_multipart.multipart import parse_options_header
from starlette.requests import Request

from .errors import ApiError

# Structural characters (,:[{) a JSON body may hold. json.loads holds the GIL for as long as it
# runs, so even in a worker thread a body of millions of tiny values stalls the event loop;
# counting them first is cheap, and a body of `max_images` images needs a few dozen.
MAX_JSON_STRUCTURE = 10_000
# Parts a multipart body may hold besides its images (option fields); more is refused at once.
MAX_EXTRA_PARTS = 64

# Declared types an image upload may carry (browsers send octet-stream for unknown suffixes).
ACCEPTED_TYPES = frozenset(
    {
        "image/jpeg",
        "image/png",
        "image/gif",
        "image/bmp",
        "image/webp",
        "image/tiff",
        "image/x-portable-anymap",
        "image/x-portable-pixmap",
        "image/x-portable-graymap",
        "application/octet-stream",
    }
)
# What the decoder may run: plain raster formats only (no EPS/PDF, which call out to programs).
DECODE_FORMATS = ("JPEG", "PNG", "GIF", "BMP", "WEBP", "TIFF", "PPM")
IMAGE_FIELD_NAMES = frozenset({"image", "images", "file", "files"})


@dataclass(frozen=True)
class Upload:
    name: str
    data: bytes


@dataclass
class ParsedBody:
    uploads: list[Upload]
    fields: dict[str, Any] = field(default_factory=dict)  # options sent in the body


async def read_body(request: Request, limit: int) -> bytes:
    """The whole body, refused with 413 as soon as it is known to exceed `limit` bytes."""
    too_large = ApiError(
        413,
        "payload_too_large",
        f"request body over the limit of {limit} bytes",
        headers={"Connection": "close"},  # the rest of it is not read
    )
    declared = request.headers.get("content-length")
    if declared is not None:
        if not declared.isdigit():
            raise ApiError(400, "bad_request", f"invalid Content-Length {declared!r}")
        if int(declared) > limit:
            raise too_large
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise too_large
    return bytes(body)


def parse_body(body: bytes, content_type: str, max_images: int) -> ParsedBody:
    """Images and option fields of a multipart or JSON body; 415/400/413 when unusable."""
    media = content_type.split(";", 1)[0].strip().lower()
    if media == "multipart/form-data":
        parsed = _multipart(body, content_type, max_images + MAX_EXTRA_PARTS)
    elif media == "application/json":
        parsed = _json(body)
    else:
        raise ApiError(
            415,
            "unsupported_media_type",
            "send images as multipart/form-data uploads or as application/json "
            f"{{'images': [{{'name', 'data' (base64)}}]}}, not {media or 'no content type'}",
        )
    if not parsed.uploads:
        raise ApiError(400, "no_images", "the request holds no images")
    if len(parsed.uploads) > max_images:
        raise ApiError(
            413,
            "too_many_images",
            f"{len(parsed.uploads)} images in one request; the limit is {max_images}",
        )
    return parsed


def _check_type(name: str, declared: str) -> None:
    if declared and declared.lower() not in ACCEPTED_TYPES:
        raise ApiError(
            415,
            "unsupported_media_type",
            f"{name}: type {declared} is not accepted; send JPEG, PNG, GIF, BMP, WebP, TIFF "
            "or PNM images",
        )


class _PartCollector:
    """python-multipart callbacks gathering each part's headers and bytes."""

    def __init__(self, max_parts: int) -> None:
        self.max_parts = max_parts
        self.parts: list[tuple[dict[str, str], bytes]] = []
        self._headers: dict[str, str] = {}
        self._field = b""
        self._value = b""
        self._data = bytearray()

    def callbacks(self) -> dict[str, Any]:
        return {
            "on_part_begin": self._begin,
            "on_header_field": lambda d, s, e: setattr(self, "_field", self._field + d[s:e]),
            "on_header_value": lambda d, s, e: setattr(self, "_value", self._value + d[s:e]),
            "on_header_end": self._header_end,
            "on_part_data": lambda d, s, e: self._data.extend(d[s:e]),
            "on_part_end": lambda: self.parts.append((self._headers, bytes(self._data))),
        }

    def _begin(self) -> None:
        if len(self.parts) >= self.max_parts:  # stop parsing here, not after a million parts
            raise ApiError(
                413, "too_many_parts", f"multipart body with over {self.max_parts} parts"
            )
        self._headers, self._data = {}, bytearray()

    def _header_end(self) -> None:
        self._headers[self._field.decode("latin-1").lower()] = self._value.decode(
            "utf-8", "replace"
        )
        self._field, self._value = b"", b""


def _multipart(body: bytes, content_type: str, max_parts: int) -> ParsedBody:
    _, params = parse_options_header(content_type)
    boundary = params.get(b"boundary")
    if not boundary:
        raise ApiError(400, "bad_request", "multipart/form-data without a boundary")
    collector = _PartCollector(max_parts)
    try:
        parser = MultipartParser(boundary, collector.callbacks())
        parser.write(body)
        parser.finalize()
    except MultipartParseError as exc:
        raise ApiError(400, "bad_request", f"malformed multipart body ({exc})") from exc
    parsed = ParsedBody([])
    for headers, data in collector.parts:
        _, disposition = parse_options_header(headers.get("content-disposition", ""))
        field_name = disposition.get(b"name", b"").decode("utf-8", "replace")
        filename = disposition.get(b"filename")
        if filename is not None or field_name in IMAGE_FIELD_NAMES:
            name = (filename or b"").decode("utf-8", "replace") or f"image-{len(parsed.uploads)}"
            _check_type(name, headers.get("content-type", "").split(";", 1)[0].strip())
            parsed.uploads.append(Upload(name, data))
        elif field_name:
            parsed.fields[field_name] = data.decode("utf-8", "replace")
    return parsed


def _json(body: bytes) -> ParsedBody:
    structure = sum(body.count(mark) for mark in (b",", b":", b"[", b"{"))
    if structure > MAX_JSON_STRUCTURE:
        raise ApiError(
            413,
            "json_too_complex",
            f"JSON body with {structure} separators and brackets (the limit is "
            f"{MAX_JSON_STRUCTURE}): send {{'images': [...]}} with a few images",
        )
    try:
        document = json.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ApiError(400, "bad_request", f"body is not valid JSON ({exc})") from exc
    except RecursionError:  # [[[[...: a 500 from the parser otherwise
        raise ApiError(400, "bad_request", "body is JSON nested too deeply") from None
    if not isinstance(document, dict) or not isinstance(document.get("images"), list):
        raise ApiError(
            400, "bad_request", "JSON body must be {'images': [{'name': ..., 'data': BASE64}]}"
        )
    fields = {k: v for k, v in document.items() if k != "images"}
    return ParsedBody([_base64_image(i, item) for i, item in enumerate(document["images"])], fields)


def _base64_image(index: int, item: Any) -> Upload:
    """{'name', 'data'} or a bare string; data may be a data: URL."""
    name, data = f"image-{index}", item
    if isinstance(item, dict):
        name, data = str(item.get("name") or name), item.get("data")
    if not isinstance(data, str):
        raise ApiError(400, "bad_request", f"{name}: 'data' must be a base64 string")
    if data.startswith("data:"):
        header, _, data = data.partition(",")
        media, _, encoding = header[5:].partition(";")
        if encoding != "base64":
            raise ApiError(400, "bad_base64", f"{name}: data URL is not base64-encoded")
        _check_type(name, media)
    try:
        return Upload(name, base64.b64decode(data, validate=True))
    except (binascii.Error, ValueError) as exc:
        raise ApiError(400, "bad_base64", f"{name}: invalid base64 ({exc})") from exc
