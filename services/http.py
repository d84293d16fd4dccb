"""The HTTP API: health, metrics, rule-set administration, jobs, audit, lead reads."""
# No "from __future__ import annotations" here: FastAPI must see the role dependencies
# (built inside create_app) as real objects, not as strings to resolve in module globals.

import asyncio
import base64
import logging
import re
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any

import asyncpg
import orjson
from fastapi import APIRouter, Depends, FastAPI, Path, Query, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BeforeValidator
from starlette.exceptions import HTTPException as StarletteHTTPException

from schemas import api
from schemas.records import FeedbackBody, FeedbackRecord
from schemas.ruleset import RuleSetDocument
from scoring_service import store
from scoring_service.consumer import BatchReport
from scoring_service.diff import diff_documents
from scoring_service.engine import Engine
from scoring_service.intake import Rejection, parse_event
from scoring_service.ruleset_files import MAX_DOCUMENT_BYTES, RuleSetInvalid, load_document
from scoring_service.simulation import BudgetExceeded, simulate
from scoring_service.timefmt import iso
from services import kafka, replays, rulesets
from services.auth import AuthError, Principal, authenticate, authorize, parse_tokens
from services.bootstrap import Container
from services.db import UNAVAILABLE, driver
from services.feedback import REFUSED, UNKNOWN_LEAD, apply_feedback, count_feedback
from services.funnel import funnel_report
from services.jobs import get_job
from stage_router.records import score_doc

ERRORS: dict[int | str, dict[str, Any]] = {
    401: {"model": api.ErrorBody, "description": "missing or unknown token"},
    403: {"model": api.ErrorBody, "description": "the token's role may not do this"},
}
# Answers any route can give: a malformed request, a body over the size limit, a request
# that fails validation, and the database being away for a moment.
COMMON: dict[int | str, dict[str, Any]] = {
    400: {"model": api.ErrorBody, "description": "malformed request (text, encoding, nesting)"},
    413: {"model": api.ErrorBody, "description": "body larger than the configured limit"},
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
# What the request contained could not be stored or encoded (NUL, lone surrogates, depth).
MALFORMED = (UnicodeError, asyncpg.DataError, RecursionError, orjson.JSONEncodeError)
log = logging.getLogger(__name__)
NOT_FOUND: dict[int | str, dict[str, Any]] = {404: {"model": api.ErrorBody}}
# Each readiness check gets this long, and they run side by side: /readyz answers in under 2 s
# even when the database or the broker hangs.
READY_CHECK_SECONDS = 1.5


class ApiError(Exception):
    def __init__(self, status: int, code: str, detail: Any = None) -> None:
        self.status, self.code, self.detail = status, code, detail


def _cursor(value: str) -> str:
    return base64.urlsafe_b64encode(value.encode()).decode()


def _uncursor(cursor: str | None) -> str:
    if not cursor:
        return ""
    try:
        text = base64.b64decode(cursor.encode(), altchars=b"-_", validate=True).decode()
    except (ValueError, UnicodeError) as exc:
        raise ApiError(400, "invalid_cursor", "cursor is not one this API gave out") from exc
    if "\x00" in text:
        raise ApiError(400, "invalid_cursor", "cursor is not one this API gave out")
    return text


def _int_cursor(cursor: str | None, default: int) -> int:
    text = _uncursor(cursor)
    if not text:
        return default
    try:
        value = int(text)
    except ValueError as exc:
        raise ApiError(400, "invalid_cursor", "cursor is not one this API gave out") from exc
    if not 0 < value <= 2**62:
        raise ApiError(400, "invalid_cursor", "cursor is not one this API gave out")
    return value


class RequestLimits:
    """ASGI middleware: a body size limit on every request (413), and no NUL in the path or
    query (400), checked before any route runs."""

    def __init__(self, app: Any, *, max_body_bytes: int) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        raw_path = scope.get("raw_path") or scope["path"].encode("utf-8", "surrogateescape")
        query = scope.get("query_string", b"")
        if b"%00" in raw_path or b"\x00" in raw_path or b"%00" in query or b"\x00" in query:
            await _send_error(send, 400, "invalid_request", "NUL in the path or query")
            return
        headers = dict(scope.get("headers") or [])
        declared = headers.get(b"content-length")
        limit = self.max_body_bytes
        if declared is not None and (not declared.isdigit() or int(declared) > limit):
            await _send_error(send, 413, "too_large", f"the body limit is {limit} bytes")
            return
        received = 0
        started = False

        async def limited_receive() -> Any:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise _BodyTooLarge(limit)
            return message

        async def tracking_send(message: Any) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, limited_receive, tracking_send)
        except _BodyTooLarge:
            if not started:
                await _send_error(send, 413, "too_large", f"the body limit is {limit} bytes")


class _BodyTooLarge(StarletteHTTPException):
    """Raised while the body is read, so FastAPI passes it on (as it does HTTP errors)."""

    def __init__(self, limit: int) -> None:
        super().__init__(413, f"the body limit is {limit} bytes")


async def _send_error(send: Any, status: int, code: str, detail: str) -> None:
    body = orjson.dumps({"error": code, "detail": detail})
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


def _methods_for(app: FastAPI, path: str) -> set[str]:
    """Every method the OpenAPI document lists for `path` (Starlette names only the first
    route whose path matched, and FastAPI's included routers hide the rest)."""
    allowed: set[str] = set()
    for template, operations in app.openapi()["paths"].items():
        pattern = re.sub(r"\\\{[^}]+\\\}", "[^/]+", re.escape(template))
        if re.fullmatch(pattern, path):
            allowed |= {method.upper() for method in operations}
    return allowed


def create_app(container: Container) -> FastAPI:
    """The app for one running instance; every route reads `container`, nothing global."""
    settings = container.settings
    tokens = parse_tokens(settings.api_tokens.get_secret_value() if settings.api_tokens else None)
    app = FastAPI(
        title="leadscore",
        version="0.2.0",
        description=(
            "Real-time lead scoring. Authenticate with `Authorization: Bearer <token>`; roles "
            "are admin (rule changes), viewer (reads) and ingest (events). Errors are "
            '`{"error": code, "detail": ...}`.'
        ),
        responses=COMMON,
    )
    app.state.container = container
    app.add_middleware(RequestLimits, max_body_bytes=settings.max_body_bytes)

    def role(needed: str) -> Callable[[Request], Principal]:
        def dependency(request: Request) -> Principal:
            principal = authenticate(
                tokens,
                request.headers.get("authorization"),
                request.client.host if request.client else None,
            )
            return authorize(principal, needed)

        return dependency

    Admin = Annotated[Principal, Depends(role("admin"))]
    Viewer = Annotated[Principal, Depends(role("viewer"))]

    @app.exception_handler(AuthError)
    async def _auth_error(_: Request, exc: AuthError) -> JSONResponse:
        headers = {"WWW-Authenticate": "Bearer"} if exc.status == 401 else None
        return JSONResponse(
            {"error": exc.code, "detail": exc.detail}, status_code=exc.status, headers=headers
        )

    @app.exception_handler(ApiError)
    async def _api_error(_: Request, exc: ApiError) -> JSONResponse:
        return JSONResponse({"error": exc.code, "detail": exc.detail}, status_code=exc.status)

    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        problems = [
            {"loc": ".".join(str(p) for p in err["loc"]), "msg": err["msg"]} for err in exc.errors()
        ]
        return JSONResponse({"error": "invalid_request", "detail": problems}, status_code=422)

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
            allowed = _methods_for(app, request.url.path)
            headers = {"Allow": ", ".join(sorted(allowed))}
        return JSONResponse(
            {"error": codes.get(exc.status_code, "http_error"), "detail": exc.detail},
            status_code=exc.status_code,
            headers=headers,
        )

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        if isinstance(exc, MALFORMED):
            return JSONResponse(
                {"error": "invalid_request", "detail": f"cannot store or encode: {exc}"[:300]},
                status_code=400,
            )
        if isinstance(exc, UNAVAILABLE):
            return JSONResponse(
                {"error": "unavailable", "detail": "the database is unavailable; retry"},
                status_code=503,
                headers={"Retry-After": "5"},
            )
        log.error("unexpected error in %s %s", request.method, request.url.path, exc_info=exc)
        return JSONResponse(
            {"error": "internal_error", "detail": type(exc).__name__}, status_code=500
        )

    # -- operations ------------------------------------------------------------------------

    @app.get("/healthz", response_model=api.Health, tags=["operations"])
    async def healthz() -> api.Health:
        """Liveness: the process is up and its event loop answers."""
        return api.Health(status="ok")

    @app.get(
        "/readyz",
        response_model=api.Health,
        responses={503: {"model": api.Health}},
        tags=["operations"],
    )
    async def readyz(response: Response) -> api.Health:
        """Readiness, answered within 2 s: the database answers a query, the broker a
        metadata request, partitions are assigned, and no loop is restarting or dead."""
        problems: dict[str, str] = dict(container.supervisor.problems)

        async def database() -> bool:
            # Its own connection, not the pool's: a checkout from a pool whose server hangs
            # does not give way to cancellation reliably, and readiness must answer.
            url = settings.database_url.get_secret_value() if settings.database_url else ""
            try:
                conn = await asyncpg.connect(
                    url.replace("postgresql+asyncpg://", "postgresql://"),
                    timeout=READY_CHECK_SECONDS,
                )
                try:
                    ok = await conn.fetchval("SELECT 1", timeout=READY_CHECK_SECONDS) == 1
                finally:
                    conn.terminate()
                return bool(ok)
            except Exception as exc:  # any failure means "not ready", with the reason shown
                problems["database"] = f"{type(exc).__name__}: {exc}"[:200]
                return False

        async def broker() -> bool:
            if await kafka.broker_reachable(container.settings, READY_CHECK_SECONDS):
                return True
            problems["broker"] = "no answer to a metadata request"
            return False

        db_ok, broker_ok = await asyncio.gather(database(), broker())
        checks = {
            "database": db_ok,
            "broker": broker_ok,
            "partitions": bool(container.started and container.consumer.assignment()),
            "loops": not container.supervisor.problems,
        }
        ready = all(checks.values())
        if not ready:
            response.status_code = 503
        return api.Health(
            status="ready" if ready else "not ready", checks=checks, problems=problems
        )

    @app.get("/metrics", response_class=Response, tags=["operations"])
    async def metrics() -> Response:
        """Prometheus text format."""
        return Response(generate_latest(container.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    app.include_router(_rulesets_router(container, Admin, Viewer))
    app.include_router(_leads_router(container, Admin, Viewer))
    app.include_router(_ingest_router(container, Annotated[Principal, Depends(role("ingest"))]))
    return app


def _ingest_router(container: Container, Ingest: Any) -> APIRouter:
    """Segment-compatible HTTP intake: events are validated, then published to lead-events."""
    router = APIRouter(prefix="/v1", tags=["ingest"], responses=ERRORS)
    settings = container.settings

    async def publish(events: list[dict[str, Any]]) -> dict[str, Any]:
        now = time.time()
        problems = []
        encoded: list[bytes] = []
        for index, event in enumerate(events):
            try:
                encoded.append(orjson.dumps(event))
            except orjson.JSONEncodeError as exc:  # lone surrogates, nesting past 255
                problems.append({"index": index, "error": "invalid_text", "detail": str(exc)})
                continue
            parsed = parse_event(encoded[-1], now=now, fallback_ts=now)
            if isinstance(parsed, Rejection):
                problems.append({"index": index, "error": parsed.code, "detail": parsed.detail})
        if problems:
            # Nothing is published when any event is bad: the sender fixes and resends.
            raise ApiError(422, "invalid_events", problems)
        futures = []
        for event, value in zip(events, encoded, strict=True):
            key = event.get("userId") or event.get("anonymousId")
            futures.append(
                await container.producer.send(settings.topic_events, value, key=str(key).encode())
            )
        await asyncio.gather(*futures)  # 202 only once the broker acknowledged them all
        return {"accepted": len(events)}

    @router.post(
        "/batch",
        status_code=202,
        response_model=api.Accepted,
        responses={422: {"model": api.ErrorBody}},
    )
    async def batch(body: api.SegmentBatch, _: Ingest) -> dict[str, Any]:
        """A Segment batch call: `{"batch": [event, ...]}`."""
        return await publish(body.batch)

    def single_call(kind: str) -> Callable[..., Any]:
        async def single(body: dict[str, Any], _: Ingest) -> dict[str, Any]:
            return await publish([{**body, "type": kind}])

        single.__doc__ = f"A Segment {kind} call."
        return single

    for kind in ("track", "page", "identify", "group", "alias"):
        router.add_api_route(
            f"/{kind}",
            single_call(kind),
            methods=["POST"],
            status_code=202,
            response_model=api.Accepted,
            responses={422: {"model": api.ErrorBody}},
            name=f"ingest_{kind}",
        )
    return router


def _ruleset_row(row: Any, active: int | None, with_document: bool) -> dict[str, Any]:
    body = {
        "version": row["version"],
        "name": row["name"],
        "published_by": row["published_by"],
        "published_at": row["published_at"],
        "comment": row["comment"],
        "active": row["version"] == active,
    }
    if with_document:
        body["document"] = orjson.loads(row["document"])
    return body


RULESET_COLUMNS = "version, name, published_by, published_at, comment, document::text AS document"


def _rulesets_router(container: Container, Admin: Any, Viewer: Any) -> APIRouter:
    router = APIRouter(prefix="/v1", tags=["rule sets"], responses=ERRORS)
    db = container.db

    async def fetch_version(pg: Any, version: int) -> Any:
        row = await pg.fetchrow(
            f"SELECT {RULESET_COLUMNS} FROM rulesets WHERE version = $1", version
        )
        if row is None:
            raise ApiError(404, "ruleset_not_found", f"there is no rule-set version {version}")
        return row

    @router.post(
        "/rulesets",
        status_code=201,
        response_model=api.RuleSetPublic,
        responses={
            413: {"model": api.ErrorBody},
            422: {"model": api.RuleSetProblems, "description": "every problem, with its place"},
        },
        openapi_extra={
            "requestBody": {
                "required": True,
                "content": {
                    "application/json": {"schema": RuleSetDocument.model_json_schema()},
                    "application/yaml": {"schema": {"type": "string"}},
                },
            }
        },
    )
    async def publish(
        request: Request,
        who: Admin,
        comment: Annotated[str | None, Query(max_length=1000)] = None,
    ) -> dict[str, Any]:
        """Validate a rule set (JSON or YAML) and store it as a new immutable version."""
        declared = int(request.headers.get("content-length") or 0)
        if declared > MAX_DOCUMENT_BYTES:
            raise ApiError(413, "too_large", f"a rule set is at most {MAX_DOCUMENT_BYTES} bytes")
        body = await request.body()
        if len(body) > MAX_DOCUMENT_BYTES:
            raise ApiError(413, "too_large", f"a rule set is at most {MAX_DOCUMENT_BYTES} bytes")
        try:
            # Validation compiles every rule: CPU work, kept off the event loop.
            document = await asyncio.to_thread(load_document, body)
        except RuleSetInvalid as exc:
            raise ApiError(422, "invalid_ruleset", exc.problems) from exc
        async with db.connect() as conn:
            pg = await driver(conn)
            async with pg.transaction():
                version = await rulesets.publish(pg, document, by=who.name, comment=comment)
                await rulesets.record_audit(
                    pg,
                    actor=who.name,
                    action="ruleset.publish",
                    target=str(version),
                    detail={"name": document.name, "comment": comment},
                )
                row = await fetch_version(pg, version)
            active = await rulesets.active_version(pg)
        return _ruleset_row(row, active, True)

    @router.get("/rulesets", response_model=list[api.RuleSetSummary])
    async def list_rulesets(_: Viewer) -> list[dict[str, Any]]:
        """Every published version, newest first."""
        async with db.connect() as conn:
            pg = await driver(conn)
            rows = await pg.fetch(f"SELECT {RULESET_COLUMNS} FROM rulesets ORDER BY version DESC")
            active = await rulesets.active_version(pg)
        return [_ruleset_row(r, active, False) for r in rows]

    @router.get("/rulesets/active", response_model=api.RuleSetPublic, responses=NOT_FOUND)
    async def get_active(_: Viewer) -> dict[str, Any]:
        """The version live scoring uses now."""
        async with db.connect() as conn:
            pg = await driver(conn)
            active = await rulesets.active_version(pg)
            if active is None:
                raise ApiError(404, "no_active_ruleset", "no rule set is active")
            return _ruleset_row(await fetch_version(pg, active), active, True)

    @router.get("/rulesets/{version}", response_model=api.RuleSetPublic, responses=NOT_FOUND)
    async def get_version(version: Version, _: Viewer) -> dict[str, Any]:
        async with db.connect() as conn:
            pg = await driver(conn)
            return _ruleset_row(
                await fetch_version(pg, version), await rulesets.active_version(pg), True
            )

    @router.get("/rulesets/{a}/diff/{b}", response_model=api.RuleSetDiff, responses=NOT_FOUND)
    async def diff(a: Version, b: Version, _: Viewer) -> dict[str, Any]:
        """Rules added, removed and changed (field by field) from version a to version b."""
        async with db.connect() as conn:
            pg = await driver(conn)
            old, new = await fetch_version(pg, a), await fetch_version(pg, b)
        changes = diff_documents(orjson.loads(old["document"]), orjson.loads(new["document"]))
        return {"from_version": a, "to_version": b, **changes}

    @router.post("/rulesets/{version}/activate", response_model=api.Activation, responses=NOT_FOUND)
    async def activate(version: Version, who: Admin, rescore: bool = False) -> dict[str, Any]:
        """Make a version live for every instance at once; rolling back is activating an
        older one. With `rescore=true`, a job re-scores every lead under it."""
        async with db.connect() as conn:
            pg = await driver(conn)
            async with pg.transaction():
                await fetch_version(pg, version)
                await rulesets.activate(pg, version, by=who.name)
                await rulesets.record_audit(
                    pg,
                    actor=who.name,
                    action="ruleset.activate",
                    target=str(version),
                    detail={"rescore": rescore},
                )
            row = await pg.fetchrow("SELECT activated_by, activated_at FROM active_ruleset")
        job = None
        if rescore:
            job = await container.jobs.submit(
                "rescore",
                {"version": version},
                by=who.name,
                work=lambda ctx: replays.rescore_all(
                    ctx,
                    db=db,
                    settings=container.settings,
                    version=version,
                    notify=container.relay.notify,
                ),
            )
        return {"version": version, **dict(row), "rescore_job": job}

    @router.post(
        "/rulesets/{version}/simulate", response_model=api.SimulationResult, responses=NOT_FOUND
    )
    async def simulate_version(
        version: Version, body: api.SimulateRequest, _: Viewer
    ) -> dict[str, Any]:
        """Score the given events from an empty start under a version; writes nothing.
        Runs on a worker thread with a time budget (422 `too_expensive` past it)."""
        async with db.connect() as conn:
            pg = await driver(conn)
            await fetch_version(pg, version)
            document = await rulesets.load_version(pg, version)
        budget = container.settings.request_cpu_seconds

        def work() -> dict[str, Any]:
            return simulate(Engine(document), body.events, now=time.time(), budget_seconds=budget)

        try:
            return await asyncio.to_thread(work)
        except BudgetExceeded as exc:
            raise ApiError(422, "too_expensive", f"simulation over its time budget: {exc}") from exc

    @router.post(
        "/rulesets/{version}/impact",
        status_code=202,
        response_model=api.JobAccepted,
        responses=NOT_FOUND,
    )
    async def impact(
        version: Version, who: Admin, body: api.ImpactRequest | None = None
    ) -> dict[str, Any]:
        """Start a job replaying the last N days under this version and the active one."""
        days = (body or api.ImpactRequest()).days
        async with db.connect() as conn:
            await fetch_version(await driver(conn), version)
        job = await container.jobs.submit(
            "impact",
            {"version": version, "days": days},
            by=who.name,
            work=lambda ctx: replays.impact_report(ctx, db=db, candidate=version, days=days),
        )
        return {"job_id": job, "status_url": f"/v1/jobs/{job}"}

    @router.get("/jobs/{job_id}", response_model=api.JobPublic, responses=NOT_FOUND, tags=["jobs"])
    async def job_status(job_id: str, _: Viewer) -> dict[str, Any]:
        """A background job's progress and, when finished, its result."""
        job = await get_job(db, job_id)
        if job is None:
            raise ApiError(404, "job_not_found", f"there is no job {job_id!r}")
        return job

    @router.get("/audit", response_model=api.AuditPage, tags=["audit"])
    async def audit(
        _: Admin,
        cursor: str | None = None,
        limit: Annotated[int, Query(ge=1, le=500)] = 100,
    ) -> dict[str, Any]:
        """Every rule-set change and activation, newest first."""
        before = _int_cursor(cursor, 2**62)
        async with db.connect() as conn:
            rows = await (await driver(conn)).fetch(
                "SELECT id, at, actor, action, target, detail::text AS detail FROM audit_log "
                "WHERE id < $1 ORDER BY id DESC LIMIT $2",
                before,
                limit,
            )
        items = [
            {**dict(r), "detail": orjson.loads(r["detail"]) if r["detail"] else None} for r in rows
        ]
        next_cursor = _cursor(str(rows[-1]["id"])) if len(rows) == limit else None
        return {"items": items, "next_cursor": next_cursor}

    return router


def _leads_router(container: Container, Admin: Any, Viewer: Any) -> APIRouter:
    router = APIRouter(prefix="/v1", tags=["leads"], responses=ERRORS)
    db = container.db

    async def canonical(pg: Any, lead_id: str) -> str:
        links = await store.load_links(pg, [lead_id])
        seen = {lead_id}
        while lead_id in links and links[lead_id] not in seen:
            lead_id = links[lead_id]
            seen.add(lead_id)
        return lead_id

    @router.get("/leads", response_model=api.LeadPage)
    async def list_leads(
        _: Viewer,
        stage: str | None = None,
        min_score: float | None = None,
        cursor: str | None = None,
        limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    ) -> dict[str, Any]:
        """Leads in id order, filtered by stage and minimum total score; the cursor is the
        last id seen, so pages stay stable while leads change."""
        after = _uncursor(cursor)
        async with db.connect() as conn:
            rows = await (await driver(conn)).fetch(
                "SELECT lead_id, stage, account_id, fit, engagement, as_of, updated_at "
                "FROM leads WHERE lead_id > $1 AND ($2::text IS NULL OR stage = $2) "
                "AND ($3::float8 IS NULL OR fit + engagement >= $3) ORDER BY lead_id LIMIT $4",
                after,
                stage,
                min_score,
                limit,
            )
        items = [
            {
                "lead_id": r["lead_id"],
                "stage": r["stage"],
                "account_id": r["account_id"],
                "score": score_doc(r["fit"], r["engagement"]),
                "last_event_at": r["as_of"],
                "updated_at": r["updated_at"],
            }
            for r in rows
        ]
        next_cursor = _cursor(rows[-1]["lead_id"]) if len(rows) == limit else None
        return {"items": items, "next_cursor": next_cursor}

    @router.get("/leads/{lead_id}", response_model=api.LeadPublic, responses=NOT_FOUND)
    async def get_lead(lead_id: str, _: Viewer) -> dict[str, Any]:
        """A lead's stage, its score as of now and the signals that explain it."""
        async with db.connect() as conn:
            pg = await driver(conn)
            resolved = await canonical(pg, lead_id)
            leads = await store.load_leads(pg, [resolved])
            if resolved not in leads:
                raise ApiError(404, "lead_not_found", f"no lead {lead_id!r}")
            state = leads[resolved]
            version = await rulesets.active_version(pg) or state.ruleset_version
            engine = container.scorer.engine
            if engine is None or engine.rules.version != version:
                engine = Engine(await rulesets.load_version(pg, version))
        now = time.time()
        engagement = state.engagement
        if state.as_of is not None:
            engagement *= engine.rules.decay_factor(now - state.as_of)
        return {
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

    @router.get("/leads/{lead_id}/history", response_model=api.LeadHistory, responses=NOT_FOUND)
    async def history(
        lead_id: str, _: Viewer, limit: Annotated[int, Query(ge=1, le=10_000)] = 1000
    ) -> dict[str, Any]:
        """Every scored event (its rule hits and points) and every transition, oldest first."""
        async with db.connect() as conn:
            pg = await driver(conn)
            resolved = await canonical(pg, lead_id)
            events = await pg.fetch(
                "SELECT * FROM (SELECT id, message_id, type, occurred_at, hits::text AS hits, "
                "points, ruleset_version, scored_at FROM lead_events WHERE lead_id = $1 "
                "ORDER BY id DESC LIMIT $2) recent ORDER BY id",
                resolved,
                limit,
            )
            stored = await pg.fetch(
                "SELECT record::text AS record FROM transitions WHERE lead_id = $1 "
                "ORDER BY occurred_at, transition_id",
                resolved,
            )
        if not events and not stored:
            raise ApiError(404, "lead_not_found", f"no lead {lead_id!r}")
        return {
            "lead_id": resolved,
            "events": [
                {
                    **{
                        k: r[k]
                        for k in (
                            "message_id",
                            "type",
                            "occurred_at",
                            "points",
                            "ruleset_version",
                            "scored_at",
                        )
                    },
                    "hits": [
                        {"rule_id": h[0], "points": h[1], "counted": h[2]}
                        for h in orjson.loads(r["hits"])
                    ],
                }
                for r in events
            ],
            "transitions": [orjson.loads(r["record"]) for r in stored],
        }

    @router.post(
        "/leads/{lead_id}/feedback",
        response_model=api.FeedbackResponse,
        responses={
            409: {"model": api.ErrorBody, "description": "a move the table forbids"},
            **NOT_FOUND,
        },
        tags=["sales handoff"],
    )
    async def feedback(lead_id: str, body: FeedbackBody, who: Admin) -> dict[str, Any]:
        """Record a sales outcome (idempotent on feedback_id): accepted, qualified,
        rejected (with a reason), converted, won, lost or disqualified."""
        item = FeedbackRecord.model_validate(
            {**body.model_dump(), "lead_id": lead_id, "at": body.at or datetime.now(UTC)}
        )
        if item.by is None:
            item = item.model_copy(update={"by": who.name})
        now = time.time()
        async with db.connect() as conn:
            pg = await driver(conn)
            async with pg.transaction():
                engine = await container.scorer.engine_for(pg)
                batch = await apply_feedback(pg, engine, [item], now=now)
                report = BatchReport()
                rows = await container.scorer.record(pg, engine, batch.effects, report)
                await store.enqueue(pg, rows)
        container.relay.notify()
        count_feedback(container.metrics, batch, [item])
        container.metrics.count_records(report.transitions, report.notifications)
        [result] = batch.results
        if result.result == UNKNOWN_LEAD:
            raise ApiError(404, "lead_not_found", result.detail)
        if result.result == REFUSED:
            raise ApiError(409, "illegal_transition", result.detail)
        return {
            "feedback_id": result.feedback_id,
            "lead_id": result.lead_id,
            "outcome": result.outcome,
            "result": result.result,
            "duplicate": result.duplicate,
            "transition": result.transition,
        }

    @router.get("/funnel", response_model=api.FunnelReport, tags=["sales handoff"])
    async def funnel(
        _: Viewer, since: IsoDateTime | None = None, until: IsoDateTime | None = None
    ) -> dict[str, Any]:
        """Leads entering each stage, conversion between stages, time in stage, SLA
        compliance and rejections by reason, for transitions in [since, until)."""
        until = until or datetime.now(UTC)
        since = since or until - timedelta(days=30)
        if since.tzinfo is None or until.tzinfo is None:
            raise ApiError(422, "invalid_request", "since and until need a UTC offset")
        if since >= until:
            raise ApiError(422, "invalid_request", "since must be before until")
        async with db.connect() as conn:
            return await funnel_report(await driver(conn), since, until)

    return router
