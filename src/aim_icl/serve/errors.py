"""Errors a client causes, with the kind of failure; the routes map kinds to HTTP status codes."""

from __future__ import annotations

from aim_icl.errors import AIMError

# what a client gets for each kind of failure
STATUS = {
    "invalid": 400,
    "forbidden": 403,
    "not_found": 404,
    "timeout": 408,
    "conflict": 409,
    "too_large": 413,
    "full": 429,  # a server-wide store is at its limit (as OpenAI's insufficient_quota)
}
KINDS = tuple(STATUS)


class RequestError(AIMError):
    """Bad request content: `kind` is one of KINDS, the message says what is wrong and what to do."""

    def __init__(self, message: str, kind: str = "invalid"):
        super().__init__(message)
        self.kind = kind


def error_body(status: int, message: str, param: str | None = None) -> dict:
    """OpenAI's error shape, which its clients raise with the message."""
    kind = "invalid_request_error" if status < 500 else "server_error"
    return {"error": {"message": message, "type": kind, "param": param, "code": status}}
