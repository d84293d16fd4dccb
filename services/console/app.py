"""The web console at /console: pages rendered on the server from the same functions the
JSON API uses, with a little JavaScript on top (validation as you type, a job's progress).

Every page works without JavaScript; every form carries the session's CSRF token; admin
controls are left out of viewers' pages and refused by the server all the same.
"""
# No "from __future__ import annotations": FastAPI must see the parameter types.

import logging
import pathlib
import time
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import quote

from fastapi import FastAPI, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates
from starlette.exceptions import HTTPException as StarletteHTTPException

from services.adapters.postgres.errors import UNAVAILABLE
from services.app.container import Container
from services.app.errors import MALFORMED, ApiError
from services.console import (
    accounts,
    admin_sessions,
    buyer_journey,
    dead_letters,
    formats,
    leads,
    people,
    pipeline,
    rules,
    signin,
    webhooks,
)
from services.console.pages import Pages
from services.console.session import CSRF_COOKIE, Forbidden, SignInNeeded, Visitor
from stage_router.accounts import ACCOUNT_STAGES
from stage_router.lifecycle import STAGES

log = logging.getLogger(__name__)

HERE = pathlib.Path(__file__).parent


def console_app(container: Container, prefix: str) -> FastAPI:
    """The console for one running instance, to be mounted at `prefix`."""
    app = FastAPI(openapi_url=None, docs_url=None, redoc_url=None)
    app.mount("/static", StaticFiles(directory=HERE / "static"), name="static")
    templates = Jinja2Templates(directory=HERE / "templates")
    env = templates.env
    env.filters.update(
        segment=lambda value: quote(str(value), safe=""),
        when=formats.when,
        num=formats.num,
        pct=lambda v: formats.NONE if v is None else f"{v * 100:.1f}%",
        duration=formats.duration,
    )
    env.globals.update(base=prefix, stages=STAGES, account_stages=ACCOUNT_STAGES)

    @app.middleware("http")
    async def headers(request: Request, call_next: Callable[[Request], Awaitable[Response]]) -> Any:
        started = time.perf_counter()
        # Made here, so that what the page learns about its visitor is seen below.
        request.state.visitor, request.state.looked_up = None, False
        response = await call_next(request)
        visitor = request.state.visitor
        if isinstance(visitor, Visitor) and visitor.new_csrf_cookie:
            pages.set_cookie(response, CSRF_COOKIE, visitor.csrf, max_age=None)
        # Server-Timing lets anyone (and the benchmark) read the time spent here.
        response.headers["Server-Timing"] = f"app;dur={(time.perf_counter() - started) * 1000:.1f}"
        response.headers["Content-Security-Policy"] = (
            "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; "
            "form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
        )
        response.headers["X-Content-Type-Options"] = "nosniff"
        response.headers["Referrer-Policy"] = "same-origin"
        if not request.url.path.startswith(f"{prefix}/static"):
            response.headers["Cache-Control"] = "no-store"
        return response

    pages = Pages(container, prefix, templates)
    app.state.pages = pages

    # -- errors, in words ----------------------------------------------------------------------

    @app.exception_handler(SignInNeeded)
    async def _sign_in(request: Request, _: SignInNeeded) -> Response:
        if request.method == "GET":
            return pages.to("/signin", next=request.url.path)
        return pages.error_page(
            request, 401, "Please sign in", "Your session has ended. Sign in again."
        )

    @app.exception_handler(Forbidden)
    async def _forbidden(request: Request, exc: Forbidden) -> Response:
        return pages.error_page(request, 403, "Not allowed", exc.detail)

    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError) -> Response:
        detail = exc.detail
        if isinstance(detail, list):
            detail = "; ".join(f"{p.get('loc')}: {p.get('msg')}" for p in detail)
        return pages.error_page(
            request, exc.status, _TITLES.get(exc.status, "Cannot do that"), detail
        )

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> Response:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc'][1:])}: {err['msg']}" for err in exc.errors()
        )
        return pages.error_page(
            request, 400, "That address has a value this page cannot use", problems
        )

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> Response:
        words = {404: "There is no such page.", 405: "That page does not take this method."}
        return pages.error_page(
            request,
            exc.status_code,
            "Not found" if exc.status_code == 404 else "Cannot do that",
            words.get(exc.status_code, str(exc.detail)),
        )

    async def _expected(request: Request, exc: Exception) -> Response:
        if isinstance(exc, MALFORMED):
            return pages.error_page(
                request, 400, "Cannot use that", "The request could not be stored."
            )
        return pages.error_page(
            request, 503, "The database is away", "The database is unavailable; try again."
        )

    # Registered by class, these are answered where they happen; only the catch-all below
    # goes through Starlette's last-resort middleware, which re-raises after answering.
    for kind in (*MALFORMED, *UNAVAILABLE):
        app.add_exception_handler(kind, _expected)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> Response:
        log.error(
            "unexpected error in console %s %s", request.method, request.url.path, exc_info=exc
        )
        return pages.error_page(
            request,
            500,
            "Something went wrong",
            "The console could not show this page. The error is in the service's log.",
        )

    for pages_module in (
        signin,
        admin_sessions,
        webhooks,
        rules,
        leads,
        accounts,
        pipeline,
        buyer_journey,
        dead_letters,
        people,
    ):
        app.include_router(pages_module.router)

    return app


_TITLES = {404: "Not found", 409: "Cannot do that now", 413: "Too large", 422: "Cannot use that"}
