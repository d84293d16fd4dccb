"""The HTTP app: authentication, errors in one shape, and the routers by resource."""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, RedirectResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from services import __version__
from services.adapters.postgres.errors import UNAVAILABLE
from services.adapters.postgres.rule_set_store import VersionUnusable
from services.app.container import Container
from services.app.errors import MALFORMED, ApiError
from services.auth import AuthError
from services.http import (
    accounts,
    ingest,
    leads,
    operations,
    people,
    rule_sets,
    sessions,
    webhooks,
)
from services.http.common import (
    COMMON,
    EncodedSegments,
    RequestLimits,
    error_body,
    methods_for,
)
from services.http.deps import TokenIgnoredNotice
from services.http.guards import AllowedHosts, BrowserGuard, DocumentedContentTypes

log = logging.getLogger(__name__)


def create_app(container: Container) -> FastAPI:
    """The app for one running instance; every route reads `container`, nothing global."""
    settings = container.settings
    app = FastAPI(
        title="leadscore",
        version=__version__,
        description=(
            "Real-time lead scoring. Authenticate with `Authorization: Bearer <token>` (the "
            "intake also takes an ingest token as the HTTP Basic user name, as tracking SDKs "
            "send their write key); roles are admin (rule changes), viewer (reads) and ingest "
            '(events). Errors are `{"error": code, "detail": ...}`.'
        ),
        responses=COMMON,
    )
    app.state.container = container
    app.add_middleware(RequestLimits, max_body_bytes=settings.max_body_bytes)
    # Runs before the routes: a foreign Host is refused before anything else is read.
    app.add_middleware(
        BrowserGuard,
        hosts=AllowedHosts(settings.allowed_hosts, settings.http_host),
        content_types=DocumentedContentTypes(app.openapi),
    )
    # Added last, so it runs first: every check after it, and the router, see an id with a
    # `/` in it as the one segment the client sent (common.py, ids as path segments).
    app.add_middleware(EncodedSegments)

    app.state.ignored_tokens = TokenIgnoredNotice()

    @app.exception_handler(AuthError)
    async def _auth_error(request: Request, exc: AuthError) -> JSONResponse:
        headers = {"WWW-Authenticate": "Bearer"} if exc.status == 401 else None
        return JSONResponse(
            error_body(request.url.path, exc.code, exc.detail),
            status_code=exc.status,
            headers=headers,
        )

    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError) -> JSONResponse:
        return JSONResponse(
            error_body(request.url.path, exc.code, exc.detail), status_code=exc.status
        )

    @app.exception_handler(VersionUnusable)
    async def _unusable(request: Request, exc: VersionUnusable) -> JSONResponse:
        live = container.rules.unusable
        if live is not None and live.version == exc.version:
            # The live version: nothing changes leads until an admin activates another.
            detail = f"{exc}; nothing is scored until another version is activated"
            return JSONResponse(
                error_body(request.url.path, "ruleset_unusable", detail),
                status_code=503,
                headers={"Retry-After": "30"},
            )
        return JSONResponse(
            error_body(request.url.path, "ruleset_unusable", str(exc)), status_code=422
        )

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        problems = [
            {"loc": ".".join(str(p) for p in err["loc"]), "msg": err["msg"]} for err in exc.errors()
        ]
        return JSONResponse(
            error_body(request.url.path, "invalid_request", problems), status_code=422
        )

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        codes = {
            400: "invalid_request",
            404: "not_found",
            405: "method_not_allowed",
            413: "too_large",
        }
        headers = getattr(exc, "headers", None)
        if exc.status_code == 405:
            # Starlette names only the first route that matched the path; list them all.
            allowed = methods_for(app, request.url.path)
            headers = {"Allow": ", ".join(sorted(allowed))}
        code = codes.get(exc.status_code, "http_error")
        return JSONResponse(
            error_body(request.url.path, code, exc.detail),
            status_code=exc.status_code,
            headers=headers,
        )

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        if isinstance(exc, MALFORMED):
            detail = f"cannot store or encode: {exc}"[:300]
            return JSONResponse(
                error_body(request.url.path, "invalid_request", detail), status_code=400
            )
        if isinstance(exc, UNAVAILABLE):
            return JSONResponse(
                error_body(request.url.path, "unavailable", "the database is unavailable; retry"),
                status_code=503,
                headers={"Retry-After": "5"},
            )
        log.error("unexpected error in %s %s", request.method, request.url.path, exc_info=exc)
        return JSONResponse(
            error_body(request.url.path, "internal_error", type(exc).__name__), status_code=500
        )

    for resource in (operations, rule_sets, leads, accounts, sessions, webhooks, ingest, people):
        app.include_router(resource.router)
    # The web console: same process, same port, same tokens. Imported here because the
    # console's pages call this package's routers' functions.
    from services.console.app import console_app

    app.mount("/console", console_app(container, "/console"))

    @app.get("/", include_in_schema=False)
    async def _front_door() -> RedirectResponse:
        return RedirectResponse("/console/", status_code=307)

    return app
