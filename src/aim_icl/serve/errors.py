"""Errors a client causes, with the kind of failure; the routes map kinds to HTTP status codes."""

from __future__ import annotations

from aim_icl.errors import AIMError

KINDS = ("invalid", "too_large", "forbidden", "not_found", "conflict")


class RequestError(AIMError):
    """Bad request content: `kind` is one of KINDS, the message says what is wrong and what to do."""

    def __init__(self, message: str, kind: str = "invalid"):
        super().__init__(message)
        self.kind = kind
