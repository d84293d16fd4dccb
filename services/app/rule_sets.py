"""Rule sets: publish, read, diff, activate (and promote a challenger), propose weights,
run a challenger, simulate, impact reports, their jobs and the audit trail. Shared by the HTTP
API, the console and the CLI (through the API)."""

from __future__ import annotations

import asyncio
import time
from datetime import datetime
from typing import Any

import orjson

from schemas import api
from schemas.rule_set import RuleSetDocument
from scoring_service import weights
from scoring_service.diff import diff_documents
from scoring_service.engine import Engine
from scoring_service.rule_set_files import MAX_DOCUMENT_BYTES, RuleSetInvalid, load_document
from scoring_service.simulation import BudgetExceeded, simulate
from services.adapters.postgres import outbox_store, read_store, rule_set_store
from services.adapters.postgres.db import Connection, Row, connection, transaction
from services.app.container import Container
from services.app.errors import ApiError
from services.app.paging import cursor_of, int_cursor, time_window
from services.pipeline import challenger, replays
from services.pipeline.effects import record_effects
from services.pipeline.jobs import get_job
from services.reports import review


def _summary(row: Row, active: int | None) -> api.RuleSetSummary:
    return api.RuleSetSummary(
        version=row["version"],
        name=row["name"],
        published_by=row["published_by"],
        published_at=row["published_at"],
        comment=row["comment"],
        active=row["version"] == active,
    )


def _public(row: Row, active: int | None) -> api.RuleSetPublic:
    return api.RuleSetPublic(
        **_summary(row, active).model_dump(),
        document=orjson.loads(row["document"]),
        source=row["source"],
    )


async def _fetch_version(pg: Connection, version: int) -> Row:
    row = await read_store.ruleset_version(pg, version)
    if row is None:
        raise ApiError(404, "ruleset_not_found", f"there is no rule-set version {version}")
    return row


async def _runnable_version(container: Container, pg: Connection, version: int) -> None:
    """404 for no such version, 422 for one that cannot run: scored on an ordinary visitor's
    events first, so a version that cannot run is never made live or challenging (a
    document stored before today's checks, or edited by hand)."""
    await _fetch_version(pg, version)
    try:
        await container.rules.check(pg, version)
    except rule_set_store.VersionUnusable as exc:
        raise ApiError(422, "ruleset_unusable", str(exc)) from None


# What the API's routes and the console's pages both do, as plain functions of the container.


async def publish_ruleset(
    container: Container, body: bytes, *, by: str, comment: str | None
) -> api.RuleSetPublic:
    """Validate a rule set (JSON or YAML) and store it as a new immutable version."""
    if len(body) > MAX_DOCUMENT_BYTES:
        raise ApiError(413, "too_large", f"a rule set is at most {MAX_DOCUMENT_BYTES} bytes")
    try:
        # Validation compiles every rule: CPU work, kept off the event loop.
        document = await asyncio.to_thread(load_document, body)
    except RuleSetInvalid as exc:
        raise ApiError(422, "invalid_ruleset", exc.problems) from exc
    async with connection(container.db) as pg:
        async with pg.transaction():
            # The author's text is kept as sent: it decoded as UTF-8 in load_document.
            source = body.decode("utf-8")
            version = await rule_set_store.publish(
                pg, document, by=by, comment=comment, source=source
            )
            await rule_set_store.record_audit(
                pg,
                actor=by,
                action="ruleset.publish",
                target=str(version),
                detail={"name": document.name, "comment": comment},
            )
            row = await _fetch_version(pg, version)
        active = await rule_set_store.active_version(pg)
    return _public(row, active)


async def ruleset_list(container: Container) -> list[api.RuleSetSummary]:
    """Every published version, newest first."""
    async with connection(container.db) as pg:
        rows = await read_store.ruleset_versions(pg)
        active = await rule_set_store.active_version(pg)
    return [_summary(r, active) for r in rows]


async def ruleset_detail(container: Container, version: int | None) -> api.RuleSetPublic:
    """One version with its document; None means the active one."""
    async with connection(container.db) as pg:
        active = await rule_set_store.active_version(pg)
        if version is None:
            if active is None:
                raise ApiError(404, "no_active_ruleset", "no rule set is active")
            version = active
        return _public(await _fetch_version(pg, version), active)


async def ruleset_diff(container: Container, a: int, b: int) -> api.RuleSetDiff:
    """Rules added, removed and changed (field by field) from version a to version b."""
    async with connection(container.db) as pg:
        old, new = await _fetch_version(pg, a), await _fetch_version(pg, b)
    changes = diff_documents(orjson.loads(old["document"]), orjson.loads(new["document"]))
    return api.RuleSetDiff.model_validate({"from_version": a, "to_version": b, **changes})


async def activate_version(
    container: Container, version: int, *, by: str, rescore: bool = False
) -> api.Activation:
    """Make a version live for every instance at once; rolling back is activating an older
    one. With `rescore`, a job re-scores every lead under it."""
    promoted: api.ChallengerPromoted | None = None
    async with connection(container.db) as pg:
        await _runnable_version(container, pg, version)
        async with pg.transaction():
            await _fetch_version(pg, version)
            previous = await rule_set_store.active_version(pg)
            await rule_set_store.activate(pg, version, by=by)
            current = await challenger.running(pg)
            if current is not None and current.version == version:
                promoted = await _promote_challenger(container, pg, version)
                rescore = False  # its state is already this version's
            await rule_set_store.record_audit(
                pg,
                actor=by,
                action="ruleset.activate",
                target=str(version),
                # What was live before: the console's roll-back goes back to it.
                detail={
                    "rescore": rescore,
                    "previous": previous,
                    "challenger": promoted.model_dump() if promoted else None,
                },
            )
        row = await read_store.activation(pg)
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
    assert row is not None  # committed above
    return api.Activation(
        version=version,
        activated_by=row["activated_by"],
        activated_at=row["activated_at"],
        rescore_job=job,
        challenger=promoted,
    )


async def _promote_challenger(
    container: Container, pg: Connection, version: int
) -> api.ChallengerPromoted:
    """The challenger's state becomes the live one, in the activation's transaction."""
    engine = await container.rules.engine_for(pg, version)
    try:
        effects, leads = await challenger.promote(pg, engine, now=time.time())
    except challenger.ChallengerRefused as exc:
        raise ApiError(409, exc.code, exc.message) from exc
    rows = await record_effects(
        pg, effects, queues=engine.rules.queues, settings=container.settings
    )
    await outbox_store.enqueue(pg, rows)
    container.metrics.count_records(effects)
    return api.ChallengerPromoted(leads=leads, moved=len(effects.transitions))


async def propose_version(
    container: Container,
    version: int,
    *,
    by: str,
    since: datetime | None = None,
    until: datetime | None = None,
    target: str = "won",
    seed: int = 0,
    score: str | None = None,
) -> api.ProposalPublic:
    """Fit points to the outcomes of the leads `version` handed off in the window and
    publish them as a new, inactive version (scoring_service/weights.py); with `score`, the
    points of that score's rules, from the leads that score qualified."""
    since, until = time_window(since, until, default_days=365)
    async with connection(container.db) as pg:
        row = await _fetch_version(pg, version)
        document = orjson.loads(row["document"])
        if score is not None and score not in ("default", *(document.get("scores") or {})):
            raise ApiError(422, "unknown_score", f"version {version} has no score {score!r}")
        samples = await review.outcome_samples(pg, since, until, version, target, score=score)
    old_points = {
        rule["id"]: float(rule.get("points", 0.0))
        for rule in document["rules"]
        if score is None or score in (rule.get("scores") or ["default"])
    }

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
    async with transaction(container.db) as pg:
        new_version = await rule_set_store.publish(pg, proposed, by=by, comment=text)
        await rule_set_store.record_audit(
            pg,
            actor=by,
            action="ruleset.propose",
            target=str(new_version),
            detail={
                "source": version,
                "target": target,
                "seed": seed,
                "window": window,
                "score": score,
            },
        )
    return api.ProposalPublic.model_validate(
        {
            "version": new_version,
            "source_version": version,
            "since": since,
            "until": until,
            "target": target,
            "seed": seed,
            "score": score,
            "comment": text,
            **proposal.to_dict(),
        }
    )


async def challenger_status(container: Container) -> api.ChallengerStatus | None:
    """The running challenger, with its warm-up progress; None when none runs."""
    async with connection(container.db) as pg:
        current = await challenger.running(pg)
        if current is None:
            return None
        warm, live = await challenger.warm_progress(pg)
        phases = await challenger.journey_phases(pg)
    return api.ChallengerStatus(
        journey_phases=phases,
        version=current.version,
        started_by=current.started_by,
        started_at=current.started_at,
        warmed_at=current.warmed_at,
        leads_warm=warm,
        leads_live=live,
    )


async def start_challenge(container: Container, version: int, *, by: str) -> api.ChallengerStarted:
    """Make a version the challenger, and start the job that warms it."""
    async with connection(container.db) as pg:
        await _runnable_version(container, pg, version)
        async with pg.transaction():
            await _fetch_version(pg, version)
            try:
                await challenger.start(pg, version, by=by)
            except challenger.ChallengerRefused as exc:
                raise ApiError(409, exc.code, exc.message) from exc
            await rule_set_store.record_audit(
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
    return api.ChallengerStarted(**status.model_dump(), warm_up_job=job)


async def stop_challenge(container: Container, version: int, *, by: str) -> None:
    async with transaction(container.db) as pg:
        await _fetch_version(pg, version)
        try:
            await challenger.stop(pg, version)
        except challenger.ChallengerRefused as exc:
            raise ApiError(409, exc.code, exc.message) from exc
        await rule_set_store.record_audit(
            pg, actor=by, action="ruleset.challenge.stop", target=str(version), detail=None
        )


async def run_simulation(
    container: Container, version: int, events: list[dict[str, Any]]
) -> api.SimulationResult:
    """Score `events` from an empty start under a version; writes nothing. Runs on a worker
    thread with a time budget (422 `too_expensive` past it)."""
    async with connection(container.db) as pg:
        await _fetch_version(pg, version)
        document = await rule_set_store.load_version(pg, version)
    budget = container.settings.request_cpu_seconds

    def work() -> dict[str, Any]:
        return simulate(Engine(document), events, now=time.time(), budget_seconds=budget)

    try:
        result = await asyncio.to_thread(work)
    except BudgetExceeded as exc:
        raise ApiError(422, "too_expensive", f"simulation over its time budget: {exc}") from exc
    return api.SimulationResult.model_validate(result)


async def start_impact(container: Container, version: int, *, by: str, days: float) -> str:
    """Start a job replaying the last `days` of history under `version` and the active one."""
    async with connection(container.db) as pg:
        await _fetch_version(pg, version)
    return await container.jobs.submit(
        "impact",
        {"version": version, "days": days},
        by=by,
        work=lambda ctx: replays.impact_report(
            ctx, db=container.db, rules=container.rules, candidate=version, days=days
        ),
    )


async def job_detail(container: Container, job_id: str) -> api.JobPublic:
    job = await get_job(container.db, job_id)
    if job is None:
        raise ApiError(404, "job_not_found", f"there is no job {job_id!r}")
    return api.JobPublic.model_validate(job)


async def audit_page(container: Container, cursor: str | None, limit: int) -> api.AuditPage:
    """Every rule-set change and activation, newest first."""
    before = int_cursor(cursor, 2**62)
    async with connection(container.db) as pg:
        rows = await read_store.audit_page(pg, before=before, limit=limit)
    items = [
        api.AuditEntry.model_validate(
            {**dict(r), "detail": orjson.loads(r["detail"]) if r["detail"] else None}
        )
        for r in rows
    ]
    next_cursor = cursor_of(str(rows[-1]["id"])) if len(rows) == limit else None
    return api.AuditPage(items=items, next_cursor=next_cursor)


async def previous_active_version(container: Container, current: int) -> int | None:
    """The version that was active before `current` (what a rollback would go back to)."""
    async with connection(container.db) as pg:
        return await read_store.previous_active(pg, current)
