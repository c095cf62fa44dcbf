"""One shape for every error the API returns: {"error": {"code", "message", "request_id"}}."""

from __future__ import annotations


class ApiError(Exception):
    """A client-facing failure with its HTTP status, a stable code and a readable message."""

    def __init__(
        self, status: int, code: str, message: str, headers: dict[str, str] | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.headers = headers or {}


def error_body(code: str, message: str, request_id: str | None) -> dict:
    return {"error": {"code": code, "message": message, "request_id": request_id}}
