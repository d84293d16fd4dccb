"""Rule sets: publish, read, diff, activate, simulate, impact reports; their jobs and audit."""

import asyncio
import time
from datetime import datetime
from typing import Annotated, Any

import orjson
from fastapi import APIRouter, Query, Request

from schemas import api
from schemas.ruleset import RuleSetDocument
from scoring_service import weights
from scoring_service.diff import diff_documents
from scoring_service.engine import Engine
from scoring_service.ruleset_files import MAX_DOCUMENT_BYTES, RuleSetInvalid, load_document
from scoring_service.simulation import BudgetExceeded, simulate
from services import challenger, queries, replays, review, rulesets, store
from services.bootstrap import Container
from services.db import driver
from services.http.common import (
    ERRORS,
    NOT_FOUND,
    ApiError,
    Version,
    cursor_of,
    int_cursor,
    time_window,
)
from services.jobs import get_job


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


async def _fetch_version(pg: Any, version: int) -> Any:
    row = await queries.ruleset_version(pg, version)
    if row is None:
        raise ApiError(404, "ruleset_not_found", f"there is no rule-set version {version}")
    return row


# What the API's routes and the console's pages both do, as plain functions of the container.


async def publish_ruleset(
    container: Container, body: bytes, *, by: str, comment: str | None
) -> dict[str, Any]:
    """Validate a rule set (JSON or YAML) and store it as a new immutable version."""
    if len(body) > MAX_DOCUMENT_BYTES:
        raise ApiError(413, "too_large", f"a rule set is at most {MAX_DOCUMENT_BYTES} bytes")
    try:
        # Validation compiles every rule: CPU work, kept off the event loop.
        document = await asyncio.to_thread(load_document, body)
    except RuleSetInvalid as exc:
        raise ApiError(422, "invalid_ruleset", exc.problems) from exc
    async with container.db.connect() as conn:
        pg = await driver(conn)
        async with pg.transaction():
            version = await rulesets.publish(pg, document, by=by, comment=comment)
            await rulesets.record_audit(
                pg,
                actor=by,
                action="ruleset.publish",
                target=str(version),
                detail={"name": document.name, "comment": comment},
            )
            row = await _fetch_version(pg, version)
        active = await rulesets.active_version(pg)
    return _ruleset_row(row, active, True)


async def ruleset_list(container: Container) -> list[dict[str, Any]]:
    """Every published version, newest first."""
    async with container.db.connect() as conn:
        pg = await driver(conn)
        rows = await queries.ruleset_versions(pg)
        active = await rulesets.active_version(pg)
    return [_ruleset_row(r, active, False) for r in rows]


async def ruleset_detail(container: Container, version: int | None) -> dict[str, Any]:
    """One version with its document; None means the active one."""
    async with container.db.connect() as conn:
        pg = await driver(conn)
        active = await rulesets.active_version(pg)
        if version is None:
            if active is None:
                raise ApiError(404, "no_active_ruleset", "no rule set is active")
            version = active
        return _ruleset_row(await _fetch_version(pg, version), active, True)


async def ruleset_diff(container: Container, a: int, b: int) -> dict[str, Any]:
    """Rules added, removed and changed (field by field) from version a to version b."""
    async with container.db.connect() as conn:
        pg = await driver(conn)
        old, new = await _fetch_version(pg, a), await _fetch_version(pg, b)
    changes = diff_documents(orjson.loads(old["document"]), orjson.loads(new["document"]))
    return {"from_version": a, "to_version": b, **changes}


async def activate_version(
    container: Container, version: int, *, by: str, rescore: bool = False
) -> dict[str, Any]:
    """Make a version live for every instance at once; rolling back is activating an older
    one. With `rescore`, a job re-scores every lead under it."""
    promoted: dict[str, Any] | None = None
    async with container.db.connect() as conn:
        pg = await driver(conn)
        async with pg.transaction():
            await _fetch_version(pg, version)
            previous = await rulesets.active_version(pg)
            await rulesets.activate(pg, version, by=by)
            current = await challenger.running(pg)
            if current is not None and current.version == version:
                promoted = await _promote_challenger(container, pg, version)
                rescore = False  # its state is already this version's
            await rulesets.record_audit(
                pg,
                actor=by,
                action="ruleset.activate",
                target=str(version),
                # What was live before: the console's roll-back goes back to it.
                detail={"rescore": rescore, "previous": previous, "challenger": promoted},
            )
        row = await queries.activation(pg)
    if promoted is not None:
        container.writer.on_commit()  # the relay publishes the moves' records now
    job = None
    if rescore:
        job = await container.jobs.submit(
            "rescore",
            {"version": version},
            by=by,
            work=lambda ctx: replays.rescore_all(ctx, writer=container.writer, version=version),
        )
    return {"version": version, **dict(row or {}), "rescore_job": job, "challenger": promoted}


async def _promote_challenger(container: Container, pg: Any, version: int) -> dict[str, Any]:
    """The challenger's state becomes the live one, in the activation's transaction."""
    engine = await container.rules.engine_for(pg, version)
    try:
        effects, leads = await challenger.promote(pg, engine, now=time.time())
    except challenger.ChallengerRefused as exc:
        raise ApiError(409, exc.code, exc.message) from exc
    settings = container.settings
    rows = await store.record_effects(
        pg,
        effects,
        queues=engine.rules.queues,
        transitions_topic=settings.topic_transitions,
        notifications_topic=settings.topic_notifications,
        account_transitions_topic=settings.topic_account_transitions,
    )
    await store.enqueue(pg, rows)
    container.metrics.count_records(effects)
    return {"leads": leads, "moved": len(effects.transitions)}


async def propose_version(
    container: Container,
    version: int,
    *,
    by: str,
    since: datetime | None = None,
    until: datetime | None = None,
    target: str = "won",
    seed: int = 0,
) -> dict[str, Any]:
    """Fit points to the outcomes of the leads `version` handed off in the window and
    publish them as a new, inactive version (scoring_service/weights.py)."""
    since, until = time_window(since, until, default_days=365)
    async with container.db.connect() as conn:
        pg = await driver(conn)
        row = await _fetch_version(pg, version)
        samples = await review.outcome_samples(pg, since, until, version, target)
    document = orjson.loads(row["document"])
    old_points = {rule["id"]: float(rule.get("points", 0.0)) for rule in document["rules"]}

    def fit() -> weights.Proposal:
        return weights.propose_points(
            [weights.Sample(lead, hits, good) for lead, good, hits in samples],
            old_points,
            seed=seed,
        )

    try:
        proposal = await asyncio.to_thread(fit)
    except weights.TooFewOutcomes as exc:
        raise ApiError(422, "too_few_outcomes", str(exc)) from exc
    window = f"{since.date().isoformat()} to {until.date().isoformat()}"
    text = weights.comment(proposal, source=version, window=window, target=target)
    proposed = RuleSetDocument.model_validate(
        weights.with_points(document, {r: new for r, (_, new) in proposal.points.items()})
    )
    async with container.db.connect() as conn:
        pg = await driver(conn)
        async with pg.transaction():
            new_version = await rulesets.publish(pg, proposed, by=by, comment=text)
            await rulesets.record_audit(
                pg,
                actor=by,
                action="ruleset.propose",
                target=str(new_version),
                detail={"source": version, "target": target, "seed": seed, "window": window},
            )
    return {
        "version": new_version,
        "source_version": version,
        "since": since,
        "until": until,
        "target": target,
        "seed": seed,
        "comment": text,
        **proposal.to_dict(),
    }


async def challenger_status(container: Container) -> dict[str, Any] | None:
    """The running challenger, with its warm-up progress; None when none runs."""
    async with container.db.connect() as conn:
        pg = await driver(conn)
        current = await challenger.running(pg)
        if current is None:
            return None
        warm, live = await challenger.warm_progress(pg)
    return {
        "version": current.version,
        "started_by": current.started_by,
        "started_at": current.started_at,
        "warmed_at": current.warmed_at,
        "leads_warm": warm,
        "leads_live": live,
    }


async def start_challenge(container: Container, version: int, *, by: str) -> dict[str, Any]:
    """Make a version the challenger, and start the job that warms it."""
    async with container.db.connect() as conn:
        pg = await driver(conn)
        async with pg.transaction():
            await _fetch_version(pg, version)
            try:
                await challenger.start(pg, version, by=by)
            except challenger.ChallengerRefused as exc:
                raise ApiError(409, exc.code, exc.message) from exc
            await rulesets.record_audit(
                pg, actor=by, action="ruleset.challenge", target=str(version), detail=None
            )
    job = await container.jobs.submit(
        "challenger-warm-up",
        {"version": version},
        by=by,
        work=lambda ctx: replays.warm_challenger(ctx, writer=container.writer, version=version),
    )
    status = await challenger_status(container)
    assert status is not None
    return {**status, "warm_up_job": job}


async def stop_challenge(container: Container, version: int, *, by: str) -> None:
    async with container.db.connect() as conn:
        pg = await driver(conn)
        async with pg.transaction():
            await _fetch_version(pg, version)
            try:
                await challenger.stop(pg, version)
            except challenger.ChallengerRefused as exc:
                raise ApiError(409, exc.code, exc.message) from exc
            await rulesets.record_audit(
                pg, actor=by, action="ruleset.challenge.stop", target=str(version), detail=None
            )


async def run_simulation(
    container: Container, version: int, events: list[dict[str, Any]]
) -> dict[str, Any]:
    """Score `events` from an empty start under a version; writes nothing. Runs on a worker
    thread with a time budget (422 `too_expensive` past it)."""
    async with container.db.connect() as conn:
        pg = await driver(conn)
        await _fetch_version(pg, version)
        document = await rulesets.load_version(pg, version)
    budget = container.settings.request_cpu_seconds

    def work() -> dict[str, Any]:
        return simulate(Engine(document), events, now=time.time(), budget_seconds=budget)

    try:
        return await asyncio.to_thread(work)
    except BudgetExceeded as exc:
        raise ApiError(422, "too_expensive", f"simulation over its time budget: {exc}") from exc


async def start_impact(container: Container, version: int, *, by: str, days: float) -> str:
    """Start a job replaying the last `days` of history under `version` and the active one."""
    async with container.db.connect() as conn:
        await _fetch_version(await driver(conn), version)
    return await container.jobs.submit(
        "impact",
        {"version": version, "days": days},
        by=by,
        work=lambda ctx: replays.impact_report(
            ctx, db=container.db, rules=container.rules, candidate=version, days=days
        ),
    )


async def job_detail(container: Container, job_id: str) -> dict[str, Any]:
    job = await get_job(container.db, job_id)
    if job is None:
        raise ApiError(404, "job_not_found", f"there is no job {job_id!r}")
    return job


def rulesets_router(container: Container, Admin: Any, Viewer: Any) -> APIRouter:
    router = APIRouter(prefix="/v1", tags=["rule sets"], responses=ERRORS)
    db = container.db

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
        return await publish_ruleset(container, body, by=who.name, comment=comment)

    @router.get("/rulesets", response_model=list[api.RuleSetSummary])
    async def list_rulesets(_: Viewer) -> list[dict[str, Any]]:
        """Every published version, newest first."""
        return await ruleset_list(container)

    @router.get("/rulesets/active", response_model=api.RuleSetPublic, responses=NOT_FOUND)
    async def get_active(_: Viewer) -> dict[str, Any]:
        """The version live scoring uses now."""
        return await ruleset_detail(container, None)

    @router.get("/rulesets/{version}", response_model=api.RuleSetPublic, responses=NOT_FOUND)
    async def get_version(version: Version, _: Viewer) -> dict[str, Any]:
        return await ruleset_detail(container, version)

    @router.get("/rulesets/{a}/diff/{b}", response_model=api.RuleSetDiff, responses=NOT_FOUND)
    async def diff(a: Version, b: Version, _: Viewer) -> dict[str, Any]:
        """Rules added, removed and changed (field by field) from version a to version b."""
        return await ruleset_diff(container, a, b)

    @router.post("/rulesets/{version}/activate", response_model=api.Activation, responses=NOT_FOUND)
    async def activate(version: Version, who: Admin, rescore: bool = False) -> dict[str, Any]:
        """Make a version live for every instance at once; rolling back is activating an
        older one. With `rescore=true`, a job re-scores every lead under it."""
        return await activate_version(container, version, by=who.name, rescore=rescore)

    @router.get("/challenger", response_model=api.ChallengerStatus | None)
    async def get_challenger(_: Viewer) -> dict[str, Any] | None:
        """The version being tried on live traffic next to the active one (null if none)."""
        return await challenger_status(container)

    @router.post(
        "/rulesets/{version}/challenge",
        status_code=201,
        response_model=api.ChallengerStarted,
        responses={**NOT_FOUND, 409: {"model": api.ErrorBody}},
    )
    async def challenge(version: Version, who: Admin) -> dict[str, Any]:
        """Score every live event under this version too, into its own state: no records,
        no deadlines, no routing. One challenger at a time (409 otherwise). A job replays
        the leads that already exist under it; activating it later is immediate."""
        return await start_challenge(container, version, by=who.name)

    @router.delete(
        "/rulesets/{version}/challenge",
        response_model=api.ChallengerStopped,
        responses={**NOT_FOUND, 409: {"model": api.ErrorBody}},
    )
    async def stop(version: Version, who: Admin) -> dict[str, Any]:
        """Stop the challenger and drop its state (its stage changes stay for the review)."""
        await stop_challenge(container, version, by=who.name)
        return {"version": version, "stopped_by": who.name}

    @router.post(
        "/rulesets/{version}/propose",
        status_code=201,
        response_model=api.ProposalPublic,
        responses={**NOT_FOUND, 422: {"model": api.ErrorBody}},
    )
    async def propose(
        version: Version, who: Admin, body: api.ProposeRequest | None = None
    ) -> dict[str, Any]:
        """Fit this version's rule points to sales outcomes (won/lost, or qualified/
        rejected) of the leads it handed off in a window, with an L2-regularised logistic
        regression; publish the rounded points as a new, inactive version whose comment
        records the window, the held-out AUC and each rule's old and new points. 422
        `too_few_outcomes` when the window holds too few decided leads."""
        request = body or api.ProposeRequest()
        return await propose_version(
            container,
            version,
            by=who.name,
            since=request.since,
            until=request.until,
            target=request.target,
            seed=request.seed,
        )

    @router.post(
        "/rulesets/{version}/simulate", response_model=api.SimulationResult, responses=NOT_FOUND
    )
    async def simulate_version(
        version: Version, body: api.SimulateRequest, _: Viewer
    ) -> dict[str, Any]:
        """Score the given events from an empty start under a version; writes nothing.
        Runs on a worker thread with a time budget (422 `too_expensive` past it)."""
        return await run_simulation(container, version, body.events)

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
        job = await start_impact(container, version, by=who.name, days=days)
        return {"job_id": job, "status_url": f"/v1/jobs/{job}"}

    @router.get("/jobs/{job_id}", response_model=api.JobPublic, responses=NOT_FOUND, tags=["jobs"])
    async def job_status(job_id: str, _: Viewer) -> dict[str, Any]:
        """A background job's progress and, when finished, its result."""
        return await job_detail(container, job_id)

    @router.get("/audit", response_model=api.AuditPage, tags=["audit"])
    async def audit(
        _: Admin,
        cursor: str | None = None,
        limit: Annotated[int, Query(ge=1, le=500)] = 100,
    ) -> dict[str, Any]:
        """Every rule-set change and activation, newest first."""
        before = int_cursor(cursor, 2**62)
        async with db.connect() as conn:
            rows = await queries.audit_page(await driver(conn), before=before, limit=limit)
        items = [
            {**dict(r), "detail": orjson.loads(r["detail"]) if r["detail"] else None} for r in rows
        ]
        next_cursor = cursor_of(str(rows[-1]["id"])) if len(rows) == limit else None
        return {"items": items, "next_cursor": next_cursor}

    return router
