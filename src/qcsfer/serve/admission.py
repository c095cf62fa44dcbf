"""Admitting a /v1/predict request: its body first, under the request's deadline, then a place.

Why in this order: a place taken before the body is read let a few clients sending one byte a
second hold every place while `/readyz` said ready (issue 27). Receiving costs the server only
a socket and the bytes that arrived, so bodies are read without taking a place; each must be
complete within `--timeout` seconds of the request's arrival (408), and what follows (parsing,
decoding, the model, drawing) runs in the time left of the same deadline (504).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable
from typing import TypeVar

from starlette.requests import Request

from .errors import ApiError
from .uploads import read_body

T = TypeVar("T")


class Deadline:
    """When a request must be answered by: `seconds` after it arrived."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self._end = time.monotonic() + seconds

    def left(self) -> float:
        return max(0.0, self._end - time.monotonic())


class BodyReaders:
    """How many request bodies are arriving now (told by /readyz; they hold no place)."""

    def __init__(self) -> None:
        self.count = 0  # changed on the event loop only

    async def read(self, request: Request, limit: int, deadline: Deadline) -> bytes:
        """The whole body within the deadline: 408 past it, 413 over `limit` bytes."""
        self.count += 1
        try:
            return await asyncio.wait_for(read_body(request, limit), deadline.left())
        except asyncio.TimeoutError:  # TimeoutError from 3.11 on; another class in 3.10
            raise ApiError(
                408,
                "body_timeout",
                f"the request body did not arrive within {deadline.seconds:g} s",
                headers={"Connection": "close"},  # the rest of it is not read
            ) from None
        finally:
            self.count -= 1


async def within(deadline: Deadline, work: Awaitable[T]) -> T:
    """`work`'s result, or 504 when the request's deadline passes first."""
    try:
        return await asyncio.wait_for(work, deadline.left())
    except asyncio.TimeoutError:
        raise ApiError(504, "timeout", f"request took longer than {deadline.seconds:g} s") from None
