"""Operations: liveness, readiness and Prometheus metrics."""

from __future__ import annotations

import asyncio

from fastapi import APIRouter, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from schemas import api
from services.adapters import kafka
from services.adapters.postgres import db
from services.http.common import READY_CHECK_SECONDS
from services.http.deps import ContainerDep

router = APIRouter(tags=["operations"])


@router.get("/healthz", response_model=api.Health, tags=["operations"])
async def healthz() -> api.Health:
    """Liveness: the process is up and its event loop answers."""
    return api.Health(status="ok")


@router.get(
    "/readyz",
    response_model=api.Health,
    responses={503: {"model": api.Health}},
    tags=["operations"],
)
async def readyz(container: ContainerDep, response: Response) -> api.Health:
    """Readiness, answered within 2 s: the database answers a query, the broker a
    metadata request, partitions are assigned, no loop is restarting or dead, and the
    active rule-set version runs."""
    problems: dict[str, str] = dict(container.supervisor.problems)

    async def database() -> bool:
        url = (
            container.settings.database_url.get_secret_value()
            if container.settings.database_url
            else ""
        )
        try:
            await db.answers(url, timeout=READY_CHECK_SECONDS)
            return True
        except Exception as exc:  # any failure means "not ready", with the reason shown
            problems["database"] = f"{type(exc).__name__}: {exc}"[:200]
            return False

    async def broker() -> bool:
        if await kafka.broker_reachable(container.settings, READY_CHECK_SECONDS):
            return True
        problems["broker"] = "no answer to a metadata request"
        return False

    db_ok, broker_ok = await asyncio.gather(database(), broker())
    unusable = container.rules.unusable
    if unusable is not None:
        problems["rules"] = (
            f"{unusable}; events wait unconsumed: activate another version "
            "(POST /v1/rulesets/{version}/activate)"
        )[:600]
    checks = {
        "database": db_ok,
        "broker": broker_ok,
        "partitions": bool(container.started and container.consumer.assignment()),
        "loops": not container.supervisor.problems,
        "rules": unusable is None,
    }
    ready = all(checks.values())
    if not ready:
        response.status_code = 503
    return api.Health(status="ready" if ready else "not ready", checks=checks, problems=problems)


@router.get("/metrics", response_class=Response, tags=["operations"])
async def metrics(container: ContainerDep) -> Response:
    """Prometheus text format."""
    return Response(generate_latest(container.metrics.registry), media_type=CONTENT_TYPE_LATEST)
