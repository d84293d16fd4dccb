"""Leads: lists, a lead's score explained, its history, sales feedback, the funnel."""

import time
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

import orjson
from fastapi import APIRouter, Query

from schemas import api
from schemas.records import FeedbackBody, FeedbackRecord
from schemas.timefmt import iso
from services import challenger, queries, rulesets
from services.bootstrap import Container
from services.db import driver
from services.feedback import REFUSED, UNKNOWN_LEAD, apply_feedback, count_feedback
from services.http.common import (
    ERRORS,
    NOT_FOUND,
    ApiError,
    IsoDateTime,
    next_page_cursor,
    score_cursor,
    time_window,
    uncursor,
)
from services.lead_transaction import LeadTransaction
from services.review import review_report
from stage_router.lifecycle import IllegalMove
from stage_router.records import TransitionDoc, account_score_doc, score_doc

# What the API's routes and the console's pages both read, as plain functions of the container.


async def lead_page(
    container: Container,
    *,
    stage: str | None,
    min_score: float | None,
    cursor: str | None,
    limit: int,
    sort: str,
) -> dict[str, Any]:
    """Leads in id order, or by total score, highest first (`sort=-score`, a work queue),
    filtered by stage and minimum total score. The cursor is the last (score and) id
    seen, so pages stay stable while leads change."""
    db = container.db
    async with db.connect() as conn:
        pg = await driver(conn)
        if sort == "-score":
            rows = await queries.lead_page_by_score(
                pg,
                after=score_cursor(cursor),
                stage=stage,
                min_score=min_score,
                limit=limit,
            )
        else:
            rows = await queries.lead_page(
                pg, after=uncursor(cursor), stage=stage, min_score=min_score, limit=limit
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
    next_cursor = next_page_cursor(
        rows, limit, id_key="lead_id", score_key="total", by_score=sort == "-score"
    )
    return {"items": items, "next_cursor": next_cursor}


async def lead_detail(
    container: Container, lead_id: str, version: int | None = None
) -> dict[str, Any]:
    """A lead's stage, its score as of now and the signals that explain it; with `version`
    the challenger's, under that version (its own state, which nothing published)."""
    db = container.db
    async with db.connect() as conn:
        pg = await driver(conn)
        resolved = await queries.canonical_lead_id(pg, lead_id)
        active = await rulesets.active_version(pg)
        if version is None or version == active:
            state = await queries.lead(pg, resolved)
            account = (
                await queries.account(pg, state.account_id) if state and state.account_id else None
            )
        else:
            current = await challenger.running(pg)
            if current is None or current.version != version:
                raise ApiError(
                    404,
                    "version_not_scoring",
                    f"version {version} is neither the active version nor the challenger",
                )
            state = await challenger.lead_state(pg, resolved)
            account = (
                (await challenger.account_states(pg, [state.account_id])).get(state.account_id)
                if state and state.account_id
                else None
            )
        if state is None:
            raise ApiError(404, "lead_not_found", f"no lead {lead_id!r}")
        engine = await container.rules.engine_for(pg, version or active or state.ruleset_version)
    now = time.time()
    score, signals = engine.explain(state, at=now)
    return {
        "lead_id": state.lead_id,
        "stage": state.stage,
        "stage_entered_at": iso(state.stage_entered_at) if state.stage_entered_at else None,
        "account_id": state.account_id,
        "score": score,
        "score_as_of": iso(now),
        "last_event_at": iso(state.as_of) if state.as_of else None,
        "signals": signals,
        "ruleset_version": state.ruleset_version,
        "held": state.held,
        "committee_role": state.committee_role if engine.accounts else None,
        "account_score": (
            account_score_doc(account.fit, account.engagement, account.coverage)["total"]
            if account is not None and engine.accounts
            else None
        ),
    }


async def lead_history(container: Container, lead_id: str, limit: int) -> dict[str, Any]:
    """Every scored event (its rule hits, points and what they add to the score now)
    and every transition, oldest first, with the score they explain."""
    db = container.db
    async with db.connect() as conn:
        pg = await driver(conn)
        resolved = await queries.canonical_lead_id(pg, lead_id)
        state = await queries.lead(pg, resolved)
        events = await queries.lead_events(pg, resolved, limit=limit)
        stored = await queries.lead_transitions(pg, resolved)
        if state is None:
            raise ApiError(404, "lead_not_found", f"no lead {lead_id!r}")
        engine = await container.rules.engine_for(
            pg, await rulesets.active_version(pg) or state.ruleset_version
        )
    hits = [orjson.loads(r["hits"]) for r in events]
    shares, unlisted = engine.history_shares(
        state,
        [
            (
                r["occurred_at"].timestamp(),
                sum(h[1] for h in event_hits if h[2]),
                r["superseded"],
            )
            for r, event_hits in zip(events, hits, strict=True)
        ],
    )
    score, signals = engine.explain(state)
    return {
        "lead_id": resolved,
        "score": score,
        "score_as_of": iso(state.as_of) if state.as_of else None,
        "signals": signals,
        "unlisted_contribution": unlisted,
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
                        "held",
                        "superseded",
                    )
                },
                "contribution": share,
                "hits": [{"rule_id": h[0], "points": h[1], "counted": h[2]} for h in event_hits],
            }
            for r, event_hits, share in zip(events, hits, shares, strict=True)
        ],
        "transitions": [orjson.loads(r["record"]) for r in stored],
    }


async def funnel_figures(
    container: Container, since: datetime | None, until: datetime | None
) -> dict[str, Any]:
    """Leads entering each stage, conversion between stages, time in stage, SLA
    compliance and rejections by reason, for transitions in [since, until)."""
    db = container.db
    since, until = time_window(since, until, default_days=30)
    async with db.connect() as conn:
        return await queries.funnel_report(await driver(conn), since, until)


def leads_router(container: Container, Admin: Any, Viewer: Any) -> APIRouter:
    router = APIRouter(prefix="/v1", tags=["leads"], responses=ERRORS)
    db = container.db

    @router.get("/leads", response_model=api.LeadPage)
    async def list_leads(
        _: Viewer,
        stage: str | None = None,
        min_score: float | None = None,
        cursor: str | None = None,
        limit: Annotated[int, Query(ge=1, le=1000)] = 100,
        sort: Literal["id", "-score"] = "id",
    ) -> dict[str, Any]:
        """Leads in id order, or by total score, highest first (`sort=-score`, a work queue),
        filtered by stage and minimum total score. The cursor is the last (score and) id
        seen, so pages stay stable while leads change."""
        return await lead_page(
            container, stage=stage, min_score=min_score, cursor=cursor, limit=limit, sort=sort
        )

    @router.get("/leads/{lead_id}", response_model=api.LeadPublic, responses=NOT_FOUND)
    async def get_lead(
        lead_id: str,
        _: Viewer,
        version: Annotated[int | None, Query(ge=1, le=2**31 - 1)] = None,
    ) -> dict[str, Any]:
        """A lead's stage, its score as of now and the signals that explain it. With
        `version` set to the challenger's, the challenger's own view of the lead."""
        return await lead_detail(container, lead_id, version)

    @router.get("/leads/{lead_id}/history", response_model=api.LeadHistory, responses=NOT_FOUND)
    async def history(
        lead_id: str, _: Viewer, limit: Annotated[int, Query(ge=1, le=10_000)] = 1000
    ) -> dict[str, Any]:
        """Every scored event (its rule hits, points and what they add to the score now)
        and every transition, oldest first, with the score they explain."""
        return await lead_history(container, lead_id, limit)

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
        batch = await container.writer.run(
            lambda tx: apply_feedback(tx, [item]), writer="feedback-http"
        )
        count_feedback(container.metrics, batch)
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

    @router.post(
        "/leads/{lead_id}/stage",
        response_model=api.StageChangeResult,
        responses={
            409: {"model": api.ErrorBody, "description": "the lead is already in that stage"},
            **NOT_FOUND,
        },
    )
    async def set_stage(lead_id: str, body: api.StageChange, who: Admin) -> dict[str, Any]:
        """Set a lead's stage by hand: a transition with reason `manual` and the reason in
        words, sent like any other (notifications and deadlines included), and audited."""

        async def work(tx: LeadTransaction) -> TransitionDoc:
            ws = await tx.lock_leads([lead_id])
            state = ws.leads.get(ws.canonical(lead_id))
            if state is None:
                raise ApiError(404, "lead_not_found", f"no lead {lead_id!r}")
            try:
                effects = tx.engine.manual_move(
                    state,
                    to_stage=body.stage,
                    reason=body.reason,
                    caused_by=f"manual:{who.name}",
                    at=tx.now,
                    account=ws.accounts.get(state.account_id or ""),
                    now=tx.now,
                )
            except IllegalMove as exc:
                raise ApiError(409, "illegal_transition", str(exc)) from exc
            ws.changed_leads.add(state.lead_id)
            tx.effects.extend(effects)
            [transition] = effects.transitions
            await rulesets.record_audit(
                tx.pg,
                actor=who.name,
                action="lead.stage",
                target=state.lead_id,
                detail={
                    "from": transition["from_stage"],
                    "to": transition["to_stage"],
                    "reason": body.reason,
                    "transition_id": transition["transition_id"],
                },
            )
            return transition

        transition = await container.writer.run(work, writer="manual")
        return {"lead_id": transition["lead_id"], "transition": transition}

    @router.get(
        "/review",
        response_model=api.ReviewReport,
        response_model_by_alias=True,
        responses=NOT_FOUND,
        tags=["quarterly review"],
    )
    async def review(
        _: Viewer,
        since: IsoDateTime | None = None,
        until: IsoDateTime | None = None,
        version: Annotated[int | None, Query(ge=1, le=2**31 - 1)] = None,
    ) -> dict[str, Any]:
        """For leads a version (by default the active one) handed to sales in [since, until)
        (by default the last 90 days): the share sales accepted, qualified, converted, won and
        lost and the median time to each; conversion by score band at handoff; per rule, hits
        among won and lost leads and the lift; precision and recall of the handoff against
        the leads sales qualified in the window; the same for accounts (MQA). For the
        running challenger, the report on its own stages, with the active version's."""
        since, until = time_window(since, until, default_days=90)
        async with db.connect() as conn:
            pg = await driver(conn)
            if version is None:
                version = await rulesets.active_version(pg)
                if version is None:
                    raise ApiError(404, "no_active_ruleset", "no rule set is active")
            elif await queries.ruleset_version(pg, version) is None:
                raise ApiError(404, "ruleset_not_found", f"there is no rule-set version {version}")
            running = await challenger.running(pg)
            active = await rulesets.active_version(pg)
            if running is None or running.version != version or active is None:
                return await review_report(pg, since, until, version)
            # A challenger: its own stages over the same leads, next to the active version.
            report = await review_report(pg, since, until, version, challenger=True)
            report["compared_with"] = await review_report(pg, since, until, active)
            return report

    @router.get("/funnel", response_model=api.FunnelReport, tags=["sales handoff"])
    async def funnel(
        _: Viewer, since: IsoDateTime | None = None, until: IsoDateTime | None = None
    ) -> dict[str, Any]:
        """Leads entering each stage, conversion between stages, time in stage, SLA
        compliance and rejections by reason, for transitions in [since, until)."""
        return await funnel_figures(container, since, until)

    return router
