"""What every route shares: the error shape, the answers any route can give, request
limits, typed path and query values, and opaque page cursors."""

from __future__ import annotations

import re
import zlib
from datetime import datetime
from typing import Annotated, Any
from urllib.parse import unquote

import orjson
from fastapi import FastAPI, Path
from pydantic import AfterValidator, BeforeValidator
from starlette.exceptions import HTTPException as StarletteHTTPException

from schemas import api

ERRORS: dict[int | str, dict[str, Any]] = {
    401: {"model": api.ErrorBody, "description": "missing or unknown token"},
    403: {"model": api.ErrorBody, "description": "the token's role may not do this"},
}
# Answers any route can give: a malformed request, a body over the size limit, a request
# that fails validation, and the database being away for a moment.
COMMON: dict[int | str, dict[str, Any]] = {
    400: {"model": api.ErrorBody, "description": "malformed request (text, encoding, nesting)"},
    413: {"model": api.ErrorBody, "description": "body larger than the configured limit"},
    415: {"model": api.ErrorBody, "description": "a body encoding or media type not taken"},
    421: {"model": api.ErrorBody, "description": "a Host name this service does not answer to"},
    422: {"model": api.ErrorBody, "description": "the request does not validate"},
    503: {"model": api.ErrorBody, "description": "the database is unavailable; retry"},
}


def _iso_only(value: Any) -> Any:
    # pydantic would also take a number as seconds since 1970; the API promises ISO-8601.
    if not isinstance(value, str) or not value[:4].isdigit() or "-" not in value:
        raise ValueError("expected an ISO-8601 date-time, e.g. 2026-11-01T00:00:00Z")
    return value


IsoDateTime = Annotated[datetime, BeforeValidator(_iso_only)]
# Rule-set versions are PostgreSQL integers.
Version = Annotated[int, Path(ge=1, le=2**31 - 1)]

NOT_FOUND: dict[int | str, dict[str, Any]] = {404: {"model": api.ErrorBody}}
# Each readiness check gets this long, and they run side by side: /readyz answers in under 2 s
# even when the database or the broker hangs.
READY_CHECK_SECONDS = 1.5


# The Segment-compatible intake (services/http/ingest.py).
SEGMENT_CALLS = ("track", "page", "identify", "group", "alias")
INGEST_PATHS = frozenset({"/v1/batch", *(f"/v1/{kind}" for kind in SEGMENT_CALLS)})
# Content encodings a request body may come in: tracking SDKs gzip their batches.
GZIP = (b"gzip", b"x-gzip")


def error_body(path: str, code: str, detail: Any) -> dict[str, Any]:
    """Every error's body: `{"error": code, "detail": ...}`. On the intake, also `code` and
    `message`, the fields Segment's and RudderStack's SDKs read from an error (without them
    they report a KeyError instead of the reason)."""
    body = {"error": code, "detail": detail}
    if path in INGEST_PATHS:
        body.update(code=code, message=readable(detail))
    return body


def readable(detail: Any) -> str:
    """A detail as a sentence an SDK can print: `event 2: missing_identity: ...`."""
    if isinstance(detail, str):
        return detail
    if isinstance(detail, list) and all(isinstance(p, dict) for p in detail):
        parts = []
        for problem in detail:
            where = f"event {problem['index']}: " if "index" in problem else ""
            where = f"{problem['loc']}: " if "loc" in problem else where
            what = problem.get("error") or ""
            parts.append(
                f"{where}{what + ': ' if what else ''}{problem.get('detail') or problem.get('msg')}"
            )
        return "; ".join(parts)
    return orjson.dumps(detail).decode()


async def send_error(send: Any, path: str, status: int, code: str, detail: str) -> None:
    """An error in the API's shape, sent by middleware before any route ran."""
    body = orjson.dumps(error_body(path, code, detail))
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


class RequestLimits:
    """ASGI middleware: a body size limit on every request (413), and no NUL in the path or
    query (400), checked before any route runs. A gzip body is inflated as it is read and the
    limit applies to what it inflates to, so a compression bomb is refused after at most
    `max_body_bytes` of output, never inflated whole."""

    def __init__(self, app: Any, *, max_body_bytes: int) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = scope["path"]
        raw_path = scope.get("raw_path") or path.encode("utf-8", "surrogateescape")
        query = scope.get("query_string", b"")
        if b"%00" in raw_path or b"\x00" in raw_path or b"%00" in query or b"\x00" in query:
            await send_error(send, path, 400, "invalid_request", "NUL in the path or query")
            return
        headers = {key.lower(): value for key, value in scope.get("headers") or []}
        declared = headers.get(b"content-length")
        limit = self.max_body_bytes
        if declared is not None and (not declared.isdigit() or int(declared) > limit):
            await send_error(send, path, 413, "too_large", f"the body limit is {limit} bytes")
            return
        encoding = headers.get(b"content-encoding", b"identity").strip().lower()
        if encoding not in (b"identity", *GZIP):
            await send_error(
                send,
                path,
                415,
                "unsupported_encoding",
                "bodies may be sent as they are or with Content-Encoding: gzip",
            )
            return
        inflating = encoding in GZIP
        if inflating:  # what the app reads is the inflated body, of another length
            scope = {
                **scope,
                "headers": [
                    (key, value)
                    for key, value in scope["headers"]
                    if key.lower() not in (b"content-encoding", b"content-length")
                ],
            }
        inflater = zlib.decompressobj(wbits=31)  # 31: a gzip header and trailer
        received = produced = 0
        started = False

        async def limited_receive() -> Any:
            nonlocal received, produced
            message = await receive()
            if message["type"] != "http.request":
                return message
            body = message.get("body", b"")
            received += len(body)
            if received > limit:
                raise _BodyTooLarge(limit)
            if not inflating:
                return message
            try:
                # At most one byte more than the limit allows: enough to know it is over.
                body = inflater.decompress(body, limit - produced + 1)
            except zlib.error as exc:
                raise _BadBody("the gzip body is corrupt") from exc
            produced += len(body)
            if produced > limit:
                raise _BodyTooLarge(limit)
            if not message.get("more_body", False) and (not inflater.eof or inflater.unused_data):
                raise _BadBody("the gzip body is truncated or has data after its end")
            return {**message, "body": body}

        async def tracking_send(message: Any) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, limited_receive, tracking_send)
        except (_BodyTooLarge, _BadBody) as exc:
            if not started:
                code = "too_large" if exc.status_code == 413 else "invalid_request"
                await send_error(send, path, exc.status_code, code, str(exc.detail))


class _BodyTooLarge(StarletteHTTPException):
    """Raised while the body is read, so FastAPI passes it on (as it does HTTP errors)."""

    def __init__(self, limit: int) -> None:
        super().__init__(413, f"the body limit is {limit} bytes")


class _BadBody(StarletteHTTPException):
    """A gzip body that does not inflate (400)."""

    def __init__(self, detail: str) -> None:
        super().__init__(400, detail)


def methods_for(app: FastAPI, path: str) -> set[str]:
    """Every method the OpenAPI document lists for `path` (Starlette names only the first
    route whose path matched, and FastAPI's included routers hide the rest)."""
    allowed: set[str] = set()
    for template, operations in app.openapi()["paths"].items():
        if path_pattern(template).fullmatch(path):
            allowed |= {method.upper() for method in operations}
    return allowed


def path_pattern(template: str) -> re.Pattern[str]:
    """The paths an OpenAPI path template (`/v1/leads/{lead_id}`) stands for."""
    return re.compile(re.sub(r"\\\{[^}]+\\\}", "[^/]+", re.escape(template)))


# -- ids as path segments ------------------------------------------------------------------
#
# A lead's or an account's id is whatever the tracker sent: `acme/eu`, `50%`, `a b`. A client
# puts it in a URL percent-encoded as one segment (`/v1/leads/acme%2Feu/stage`). The router
# matches decoded paths, where that would be two segments, so `EncodedSegments` gives the
# router the path with `%` and `/` left encoded inside each segment, and `SubjectId` decodes
# the id the route received. Every other character is decoded as before.


def keep_segments(raw_path: bytes) -> str:
    """The path to route by: each raw segment decoded, except `%` and `/` in it."""
    path = raw_path.split(b"?", 1)[0].decode("ascii", "replace")
    return "/".join(
        unquote(segment).replace("%", "%25").replace("/", "%2F") for segment in path.split("/")
    )


class EncodedSegments:
    """ASGI middleware: route by segments as the client encoded them (see above)."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        raw = scope.get("raw_path") if scope["type"] == "http" else None
        if raw and (b"%2F" in raw or b"%2f" in raw or b"%25" in raw):
            scope = {**scope, "path": keep_segments(raw)}
        await self.app(scope, receive, send)


# Ids are at most this long (schemas/events.py), so a longer one names nobody.
MAX_ID_LENGTH = 512


def decoded_id(value: str) -> str:
    """The id a route received (`%` and `/` still encoded by EncodedSegments), decoded."""
    decoded = unquote(value)
    if len(decoded) > MAX_ID_LENGTH:
        raise ValueError(f"an id is at most {MAX_ID_LENGTH} characters")
    return decoded


# A lead's or an account's id in an API path, percent-encoded (up to 3 characters each).
SubjectId = Annotated[
    str, Path(min_length=1, max_length=3 * MAX_ID_LENGTH), AfterValidator(decoded_id)
]
