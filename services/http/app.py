"""The HTTP app: authentication, errors in one shape, and the routers by resource."""
# No "from __future__ import annotations": see services/http/common.py.

import logging
from collections.abc import Callable
from typing import Annotated

from fastapi import Depends, FastAPI, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, RedirectResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from services import __version__
from services.adapters.postgres.errors import UNAVAILABLE
from services.adapters.postgres.rulesets import VersionUnusable
from services.app.container import Container
from services.app.errors import MALFORMED, ApiError
from services.auth import AuthError, Principal, authenticate, authorize
from services.http.accounts import accounts_router
from services.http.common import (
    COMMON,
    EncodedSegments,
    RequestLimits,
    error_body,
    methods_for,
)
from services.http.guards import AllowedHosts, BrowserGuard, DocumentedContentTypes
from services.http.ingest import ingest_router
from services.http.leads import leads_router
from services.http.operations import operations_router
from services.http.rulesets import rulesets_router
from services.http.sessions import sessions_router
from services.http.webhooks import webhooks_router

log = logging.getLogger(__name__)


def create_app(container: Container) -> FastAPI:
    """The app for one running instance; every route reads `container`, nothing global."""
    settings = container.settings
    tokens = container.tokens
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

    ignored_tokens = TokenIgnoredNotice()

    def role(needed: str) -> Callable[[Request, Response], Principal]:
        def dependency(request: Request, response: Response) -> Principal:
            authorization = request.headers.get("authorization")
            if not tokens and authorization:
                ignored_tokens.tell(response)
            principal = authenticate(
                tokens, authorization, request.client.host if request.client else None
            )
            return authorize(principal, needed)

        return dependency

    Admin = Annotated[Principal, Depends(role("admin"))]
    Viewer = Annotated[Principal, Depends(role("viewer"))]

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

    app.include_router(operations_router(container))
    app.include_router(rulesets_router(container, Admin, Viewer))
    app.include_router(leads_router(container, Admin, Viewer))
    app.include_router(accounts_router(container, Admin, Viewer))
    app.include_router(sessions_router(container, Admin))
    app.include_router(webhooks_router(container, Admin))
    app.include_router(ingest_router(container, Annotated[Principal, Depends(role("ingest"))]))
    # The web console: same process, same port, same tokens. Imported here because the
    # console's pages call this package's routers' functions.
    from services.console.app import console_app

    app.mount("/console", console_app(container, "/console"))

    @app.get("/", include_in_schema=False)
    async def _front_door() -> RedirectResponse:
        return RedirectResponse("/console/", status_code=307)

    return app


class TokenIgnoredNotice:
    """A caller sent a token to a service that has none configured: the token proves
    nothing here (loopback is trusted as it is), and the caller probably meant another
    instance or forgot LEADSCORE_API_TOKENS. Said in a header on every such answer and
    once in the log."""

    TEXT = "no API tokens are configured here (LEADSCORE_API_TOKENS); the token was ignored"

    def __init__(self) -> None:
        self.logged = False

    def tell(self, response: Response) -> None:
        response.headers["Warning"] = f'299 leadscore "{self.TEXT}"'
        if not self.logged:
            self.logged = True
            log.warning("a request carried a bearer token, but %s", self.TEXT)
