"""The HTTP API: health, metrics, and lead reads."""

from __future__ import annotations

import ipaddress
import time
from collections.abc import Awaitable, Callable
from typing import Any

from fastapi import FastAPI, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.exceptions import HTTPException as StarletteHTTPException

from schemas.api import ErrorBody, Health, LeadPublic
from scoring_service import store
from scoring_service.engine import Engine
from scoring_service.timefmt import iso
from services import rulesets
from services.bootstrap import Container
from services.db import driver
from stage_router.records import score_doc


class ApiError(Exception):
    def __init__(self, status: int, code: str, detail: Any = None) -> None:
        self.status, self.code, self.detail = status, code, detail


def _is_loopback(host: str | None) -> bool:
    if host is None:
        return False
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def create_app(container: Container) -> FastAPI:
    app = FastAPI(
        title="leadscore",
        version="0.1.0",
        description="Real-time lead scoring: Segment events in, lifecycle transitions out.",
        responses={401: {"model": ErrorBody}, 404: {"model": ErrorBody}},
    )
    app.state.container = container

    @app.exception_handler(ApiError)
    async def _api_error(_: Request, exc: ApiError) -> JSONResponse:
        return JSONResponse({"error": exc.code, "detail": exc.detail}, status_code=exc.status)

    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        return JSONResponse({"error": "invalid_request", "detail": exc.errors()}, status_code=422)

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        return JSONResponse(
            {"error": "http_error", "detail": exc.detail}, status_code=exc.status_code
        )

    @app.exception_handler(Exception)
    async def _unexpected(_: Request, exc: Exception) -> JSONResponse:
        return JSONResponse(
            {"error": "internal_error", "detail": type(exc).__name__}, status_code=500
        )

    @app.middleware("http")
    async def _loopback_only(
        request: Request, call_next: Callable[[Request], Awaitable[Response]]
    ) -> Response:
        # Until access tokens exist, the API answers only on this machine.
        if request.url.path.startswith("/v1") and not _is_loopback(
            request.client.host if request.client else None
        ):
            return JSONResponse(
                {"error": "unauthorized", "detail": "no access tokens configured; loopback only"},
                status_code=401,
            )
        return await call_next(request)

    @app.get("/healthz", response_model=Health)
    async def healthz() -> Health:
        """Liveness: the process is up and its event loop answers."""
        return Health(status="ok")

    @app.get("/readyz", response_model=Health, responses={503: {"model": Health}})
    async def readyz(response: Response) -> Health:
        """Readiness: database reachable, broker connected, partitions assigned."""
        checks = {"database": False, "broker": False, "partitions": False}
        try:
            async with container.db.connect() as conn:
                checks["database"] = await (await driver(conn)).fetchval("SELECT 1") == 1
        except Exception:
            checks["database"] = False
        client = container.producer.client
        checks["broker"] = bool(container.started and client.cluster.brokers())
        checks["partitions"] = bool(container.started and container.consumer.assignment())
        ready = all(checks.values())
        if not ready:
            response.status_code = 503
        return Health(status="ready" if ready else "not ready", checks=checks)

    @app.get("/metrics", response_class=Response)
    async def metrics() -> Response:
        """Prometheus text format."""
        return Response(generate_latest(container.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    @app.get("/v1/leads/{lead_id}", response_model=LeadPublic)
    async def get_lead(lead_id: str) -> LeadPublic:
        """A lead's stage, its score as of now and the signals that explain it."""
        async with container.db.connect() as conn:
            pg = await driver(conn)
            links = await store.load_links(pg, [lead_id])
            canonical = lead_id
            while canonical in links:
                canonical = links[canonical]
            leads = await store.load_leads(pg, [canonical])
            if canonical not in leads:
                raise ApiError(404, "lead_not_found", f"no lead {lead_id!r}")
            state = leads[canonical]
            version = await rulesets.active_version(pg) or state.ruleset_version
            engine = container.scorer.engine
            if engine is None or engine.rules.version != version:
                engine = Engine(await rulesets.load_version(pg, version))
        now = time.time()
        engagement = state.engagement
        if state.as_of is not None:
            engagement *= engine.rules.decay_factor(now - state.as_of)
        return LeadPublic.model_validate(
            {
                "lead_id": state.lead_id,
                "stage": state.stage,
                "stage_entered_at": iso(state.stage_entered_at) if state.stage_entered_at else None,
                "account_id": state.account_id,
                "score": score_doc(state.fit, engagement),
                "score_as_of": iso(now),
                "last_event_at": iso(state.as_of) if state.as_of else None,
                "top_signals": engine.top_signals(state),
                "ruleset_version": state.ruleset_version,
            }
        )

    return app
