"""Leads: pages, a lead's score explained, its history, sales feedback, a stage set by hand,
the funnel and the outcome review. Shared by the HTTP API and the console."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Any

import orjson

from schemas import api
from schemas.api import Adjustment
from schemas.records import FeedbackBody, FeedbackRecord
from schemas.rule_set import DEFAULT_SCORE, Stage
from schemas.timefmt import iso
from scoring_service.lead_scores import lead_label
from scoring_service.scores import ADJUSTMENT_PREFIX
from scoring_service.state import AS_OF, VALUE
from services.adapters.postgres import read_store, rule_set_store
from services.adapters.postgres.db import Row, connection
from services.app.container import Container
from services.app.errors import ApiError
from services.app.journey import journey_position
from services.app.manual import run_manual
from services.app.paging import (
    label_cursor,
    next_page_cursor,
    score_cursor,
    time_window,
    uncursor,
)
from services.pipeline import challenger, manual_moves
from services.pipeline.feedback import REFUSED, UNKNOWN_LEAD, apply_feedback, count_feedback
from services.pipeline.lead_transaction import LeadTransaction
from services.reports import funnel
from services.reports.review import review_report
from stage_router.records import TransitionDoc, account_score_doc, score_doc

# What an adjustment's audit entry shows in the lead's history.
ADJUSTMENT_FIELDS = ("scores", "operation", "value", "reason", "transition_id")


async def lead_page(
    container: Container,
    *,
    stage: str | None,
    min_score: float | None,
    cursor: str | None,
    limit: int,
    sort: str,
    label: str | None = None,
    phase: str | None = None,
) -> api.LeadPage:
    """Leads in id order, or by a score, highest first (`sort=-score` for the default
    score, `-score:<name>` for a named one), filtered by stage, label, buyer-journey phase
    and a minimum total in that score. The cursor is the last (score and) id seen, so pages
    stay stable while leads change."""
    label = label or None  # a form's "any"
    phase = phase or None
    by_score = sort.startswith("-score")
    score = sort.partition(":")[2] or None
    if score == DEFAULT_SCORE:
        score = None
    db = container.db
    async with connection(db) as pg:
        if sort == "label":
            rows = await read_store.lead_page_by_label(
                pg, after=label_cursor(cursor), stage=stage, limit=limit, phase=phase
            )
        elif by_score:
            rows = await read_store.lead_page_by_score(
                pg,
                after=score_cursor(cursor),
                stage=stage,
                min_score=min_score,
                limit=limit,
                score=score,
                label=label,
                phase=phase,
            )
        else:
            rows = await read_store.lead_page(
                pg,
                after=uncursor(cursor),
                stage=stage,
                min_score=min_score,
                limit=limit,
                label=label,
                phase=phase,
            )
    items = [
        {
            "lead_id": r["lead_id"],
            "stage": r["stage"],
            "account_id": r["account_id"],
            "score": score_doc(r["fit"], r["engagement"]),
            "scores": orjson.loads(r["totals"]) if r["totals"] else {},
            "label": r["label"],
            "journey_phase": r["journey_phase"],
            "last_event_at": r["as_of"],
            "updated_at": r["updated_at"],
        }
        for r in rows
    ]
    next_cursor = next_page_cursor(
        rows,
        limit,
        id_key="lead_id",
        score_key="sort_label" if sort == "label" else "total",
        by_score=by_score or sort == "label",
    )
    return api.LeadPage.model_validate({"items": items, "next_cursor": next_cursor})


async def lead_detail(
    container: Container, lead_id: str, version: int | None = None
) -> api.LeadPublic:
    """A lead's stage, its score as of now and the signals that explain it; with `version`
    the challenger's, under that version (its own state, which nothing published)."""
    db = container.db
    async with connection(db) as pg:
        resolved = await read_store.canonical_lead_id(pg, lead_id)
        active = await rule_set_store.active_version(pg)
        if version is None or version == active:
            state = await read_store.lead(pg, resolved)
            account = (
                await read_store.account(pg, state.account_id)
                if state and state.account_id
                else None
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
    entries = engine.score_entries(state, at=now)
    return api.LeadPublic.model_validate(
        {
            "scores": entries,
            "label": lead_label(entries),
            "signals_by_score": engine.named_explanations(state, at=now),
            "qualified": state.qualified,
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
            "journey": journey_position(state.journey),
        },
    )


async def lead_history(container: Container, lead_id: str, limit: int) -> api.LeadHistory:
    """Every scored event (its rule hits, points and what they add to the score now)
    and every transition, oldest first, with the score they explain."""
    db = container.db
    async with connection(db) as pg:
        resolved = await read_store.canonical_lead_id(pg, lead_id)
        state = await read_store.lead(pg, resolved)
        events = await read_store.lead_events(pg, resolved, limit=limit)
        stored = await read_store.lead_transitions(pg, resolved)
        adjustments = await read_store.lead_adjustments(pg, resolved)
        moves = await read_store.journey_moves(pg, "lead", resolved)
        if state is None:
            raise ApiError(404, "lead_not_found", f"no lead {lead_id!r}")
        engine = await container.rules.engine_for(
            pg, await rule_set_store.active_version(pg) or state.ruleset_version
        )
    hits = [orjson.loads(r["hits"]) for r in events]
    book = engine.rules.book
    clock = state.as_of or 0.0

    def shares_in(score: str, at: float | None = None) -> tuple[list[float], float, float]:
        """Each event's share of `score` as of `at` (by default the last event), the unlisted
        events' and the adjustments' (one part, as the lead keeps them: each is in
        `adjustments`, with who and why)."""
        adjusted = state.signals.get(ADJUSTMENT_PREFIX + score)
        shares, unlisted = engine.history_shares(
            state,
            [
                *(
                    (
                        r["occurred_at"].timestamp(),
                        sum(h[1] for h in event_hits if h[2] and score in book.scores_of(h[0])),
                        r["superseded"],
                    )
                    for r, event_hits in zip(events, hits, strict=True)
                ),
                (
                    adjusted[AS_OF] if adjusted else clock,
                    adjusted[VALUE] if adjusted else 0.0,
                    False,
                ),
            ],
            score,
            at,
        )
        return shares[:-1], unlisted, shares[-1]

    shares, unlisted, adjusted_share = shares_in(DEFAULT_SCORE)
    # What each event adds as of the reading, the lead page's "now" (lead_detail's).
    now = time.time()
    shares_now, _, _ = shares_in(DEFAULT_SCORE, now)
    named = {score.name: shares_in(score.name) for score in book.scores[1:]}
    score, signals = engine.explain(state)
    return api.LeadHistory.model_validate(
        {
            "lead_id": resolved,
            "journey": moves,
            # The score and the contributions as of the last event (`score_as_of`), the time the
            # history explains; `score_now` and each event's `contribution_now` as of the reading.
            "score": score,
            "score_as_of": iso(state.as_of) if state.as_of else None,
            "score_now": engine.explain(state, at=max(now, clock))[0],
            "signals": signals,
            "unlisted_contribution": unlisted,
            "adjusted_contribution": adjusted_share,
            # The named scores' engagement, shared the same way (events by index).
            "by_score": {
                name: {
                    "engagement": score_doc(*engine.score_parts(state)[name])["engagement"],
                    "contributions": parts[0],
                    "unlisted_contribution": parts[1],
                    "adjusted_contribution": parts[2],
                }
                for name, parts in named.items()
            },
            "adjustments": [
                {
                    "at": r["at"],
                    "by": r["actor"],
                    **{
                        k: v for k, v in orjson.loads(r["detail"]).items() if k in ADJUSTMENT_FIELDS
                    },
                }
                for r in adjustments
            ],
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
                    "contribution_now": share_now,
                    "hits": [
                        {"rule_id": h[0], "points": h[1], "counted": h[2]} for h in event_hits
                    ],
                }
                for r, event_hits, share, share_now in zip(
                    events, hits, shares, shares_now, strict=True
                )
            ],
            "transitions": [orjson.loads(r["record"]) for r in stored],
        },
    )


async def funnel_figures(
    container: Container, since: datetime | None, until: datetime | None
) -> api.FunnelReport:
    """Leads entering each stage, conversion between stages, time in stage, SLA
    compliance and rejections by reason, for transitions in [since, until)."""
    db = container.db
    since, until = time_window(since, until, default_days=30)
    async with connection(db) as pg:
        return api.FunnelReport.model_validate(await funnel.funnel_report(pg, since, until))


async def record_feedback(
    container: Container, lead_id: str, body: FeedbackBody, *, by: str
) -> api.FeedbackResponse:
    """Record a sales outcome (idempotent on feedback_id), in a lead transaction."""
    item = FeedbackRecord.model_validate(
        {**body.model_dump(), "lead_id": lead_id, "at": body.at or datetime.now(UTC)}
    )
    if item.by is None:
        item = item.model_copy(update={"by": by})
    batch = await container.writer.run(
        lambda tx: apply_feedback(tx, [item]), writer="feedback-http"
    )
    count_feedback(container.metrics, batch)
    [result] = batch.results
    if result.result == UNKNOWN_LEAD:
        raise ApiError(404, "lead_not_found", result.detail)
    if result.result == REFUSED:
        raise ApiError(409, "illegal_transition", result.detail)
    return api.FeedbackResponse.model_validate(
        {
            "feedback_id": result.feedback_id,
            "lead_id": result.lead_id,
            "outcome": result.outcome,
            "result": result.result,
            "duplicate": result.duplicate,
            "transition": result.transition,
        },
    )


async def set_stage(
    container: Container, lead_id: str, stage: Stage, *, reason: str, by: str
) -> api.StageChangeResult:
    """Set a lead's stage by hand: a transition with reason `manual`, audited."""

    async def move(tx: LeadTransaction) -> TransitionDoc:
        return await manual_moves.set_stage(tx, lead_id, stage=stage, reason=reason, by=by)

    transition = await run_manual(container, move, writer="manual")
    return api.StageChangeResult.model_validate(
        {"lead_id": transition["lead_id"], "transition": transition}
    )


async def adjust(
    container: Container, lead_id: str, body: Adjustment, *, by: str
) -> api.AdjustmentResult:
    """An adjustment of a lead's engagement, in a lead transaction (manual_moves.adjust)."""

    async def move(tx: LeadTransaction) -> dict[str, Any]:
        return await manual_moves.adjust(tx, lead_id, by=by, **body.model_dump())

    return api.AdjustmentResult.model_validate(await run_manual(container, move, writer="manual"))


async def review(
    container: Container,
    since: datetime | None,
    until: datetime | None,
    version: int | None,
) -> api.ReviewReport:
    """The outcome review of `version` (the active one by default) for [since, until); for
    the running challenger, its own stages next to the active version's."""
    since, until = time_window(since, until, default_days=90)
    async with connection(container.db) as pg:
        if version is None:
            version = await rule_set_store.active_version(pg)
            if version is None:
                raise ApiError(404, "no_active_ruleset", "no rule set is active")
        elif await read_store.ruleset_version(pg, version) is None:
            raise ApiError(404, "ruleset_not_found", f"there is no rule-set version {version}")
        running = await challenger.running(pg)
        active = await rule_set_store.active_version(pg)
        if running is None or running.version != version or active is None:
            return api.ReviewReport.model_validate(await review_report(pg, since, until, version))
        # A challenger: its own stages over the same leads, next to the active version.
        report = await review_report(pg, since, until, version, challenger=True)
        report["compared_with"] = await review_report(pg, since, until, active)
        return api.ReviewReport.model_validate(report)


async def open_handoff(container: Container, lead_id: str) -> Row | None:
    """The lead's handoff to sales that is still waiting for an answer, if any."""
    async with connection(container.db) as pg:
        return await read_store.open_handoff(pg, lead_id)


async def pipeline_reviews(
    container: Container, since: datetime, until: datetime
) -> tuple[dict[str, Any] | None, dict[str, Any] | None]:
    """The active version's outcome review for [since, until) and, while one runs, the
    challenger's on its own stages (None where there is no such version)."""
    async with connection(container.db) as pg:
        active = await rule_set_store.active_version(pg)
        review_of_active = await review_report(pg, since, until, active) if active else None
        running = await challenger.running(pg)
        review_of_challenger = (
            await review_report(pg, since, until, running.version, challenger=True)
            if running is not None
            else None
        )
    return review_of_active, review_of_challenger
