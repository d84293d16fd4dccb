"""A request a use case refuses, with the status and error code both the HTTP API and the
console answer with (the API as its error body, the console as a message on the page)."""

from __future__ import annotations

from typing import Any

import orjson

from services.adapters.postgres.errors import BAD_VALUE


class ApiError(Exception):
    """Refused: `status` (an HTTP status), `code` (stable, for programs), `detail` (words)."""

    def __init__(self, status: int, code: str, detail: Any = None) -> None:
        self.status, self.code, self.detail = status, code, detail


# What the request contained could not be stored or encoded (NUL, lone surrogates, depth).
MALFORMED = (UnicodeError, *BAD_VALUE, RecursionError, orjson.JSONEncodeError)
