"""Sales feedback: the CRM's word on a lead, from `sales-feedback` or the HTTP API.

Both paths apply feedback the same way, in one transaction per batch: idempotent on
`feedback_id`, legal moves only (README: The sales handoff), the lead's open follow-up deadline
answered, and the resulting transition and notifications written to the outbox.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import asyncpg
import orjson
from aiokafka.structs import ConsumerRecord
from pydantic import ValidationError

from schemas.records import FeedbackRecord
from scoring_service import store
from scoring_service.consumer import BatchReport, EventConsumer
from scoring_service.engine import Effects, Engine
from scoring_service.intake import Rejection
from scoring_service.pipeline import Workspace
from services.metrics import Metrics
from stage_router.lifecycle import IllegalFeedback

APPLIED, REFUSED, UNKNOWN_LEAD = "applied", "refused", "unknown_lead"


@dataclass(slots=True)
class FeedbackResult:
    feedback_id: str
    lead_id: str
    outcome: str
    result: str  # applied, refused, unknown_lead
    detail: str | None = None
    transition: dict[str, Any] | None = None
    duplicate: bool = False


@dataclass(slots=True)
class FeedbackBatch:
    results: list[FeedbackResult] = field(default_factory=list)
    effects: Effects = field(default_factory=Effects)
    follow_ups: list[tuple[str, float, bool]] = field(default_factory=list)  # stage, s, in time


async def apply_feedback(
    pg: asyncpg.Connection, engine: Engine, items: list[FeedbackRecord], *, now: float
) -> FeedbackBatch:
    """Apply feedback in order inside the caller's transaction (which must commit it)."""
    batch = FeedbackBatch()
    stored = {
        r["feedback_id"]: r
        for r in await pg.fetch(
            "SELECT feedback_id, lead_id, outcome, result, detail, transition_id FROM feedback "
            "WHERE feedback_id = ANY($1::text[])",
            [i.feedback_id for i in items],
        )
    }
    fresh: list[FeedbackRecord] = []
    first_of: dict[str, FeedbackResult] = {}
    for item in items:
        if item.feedback_id in stored:
            row = stored[item.feedback_id]
            batch.results.append(
                FeedbackResult(
                    item.feedback_id,
                    row["lead_id"],
                    row["outcome"],
                    row["result"],
                    row["detail"],
                    duplicate=True,
                )
            )
        elif item.feedback_id in first_of:
            seen = first_of[item.feedback_id]
            batch.results.append(
                FeedbackResult(
                    seen.feedback_id,
                    seen.lead_id,
                    seen.outcome,
                    seen.result,
                    seen.detail,
                    duplicate=True,
                )
            )
        else:
            first_of[item.feedback_id] = FeedbackResult(
                item.feedback_id, item.lead_id, item.outcome, UNKNOWN_LEAD
            )
            fresh.append(item)
            batch.results.append(first_of[item.feedback_id])
    if not fresh:
        return batch
    named = {i.lead_id for i in fresh}
    await store.lock_keys(pg, [f"l:{i}" for i in named])
    links = await store.load_links(pg, list(named))
    targets = set(links.values()) - named
    if targets:
        await store.lock_keys(pg, [f"l:{i}" for i in targets])
    ws = Workspace(links=links)
    ws.leads = await store.load_leads(pg, list(named | targets))
    ws.accounts = await store.load_accounts(
        pg, [s.account_id for s in ws.leads.values() if s.account_id]
    )
    answered: list[tuple[str, str, float]] = []
    for item in fresh:
        result = first_of[item.feedback_id]
        lead_id = ws.canonical(item.lead_id)
        result.lead_id = lead_id
        state = ws.leads.get(lead_id)
        if state is None:
            result.detail = f"no lead {item.lead_id!r}"
            continue
        try:
            effects = engine.apply_feedback(
                state,
                outcome=item.outcome,
                reason=item.reason,
                feedback_id=item.feedback_id,
                at=item.at.timestamp(),
                account=ws.accounts.get(state.account_id or ""),
                now=now,
            )
        except IllegalFeedback as exc:
            result.result, result.detail = REFUSED, str(exc)
            continue
        result.result = APPLIED
        result.transition = effects.transitions[0]
        ws.changed_leads.add(lead_id)
        answered.append((lead_id, item.feedback_id, item.at.timestamp()))
        batch.effects.extend(effects)
    if answered:
        # Any applied feedback answers the lead's open follow-up deadline.
        rows = await pg.fetch(
            # A breached deadline can still be answered (late): it keeps its status.
            "UPDATE handoffs h SET answered_at = to_timestamp(a.at), feedback_id = a.feedback_id, "
            "status = CASE WHEN h.status = 'open' THEN 'answered' ELSE h.status END "
            "FROM unnest($1::text[], $2::text[], $3::float8[]) AS a(lead_id, feedback_id, at) "
            "WHERE h.lead_id = a.lead_id AND h.answered_at IS NULL "
            "AND h.status IN ('open', 'breached') "
            "RETURNING h.stage, extract(epoch FROM h.answered_at - h.entered_at) AS seconds, "
            "h.answered_at <= h.respond_by AS in_time",
            [a[0] for a in answered],
            [a[1] for a in answered],
            [a[2] for a in answered],
        )
        batch.follow_ups.extend((r["stage"], float(r["seconds"]), r["in_time"]) for r in rows)
    await store.save_workspace(pg, ws)
    await pg.execute(
        "INSERT INTO feedback (feedback_id, lead_id, outcome, reason, given_by, at, result, "
        "detail, transition_id) SELECT * FROM unnest($1::text[], $2::text[], $3::text[], "
        "$4::text[], $5::text[], $6::timestamptz[], $7::text[], $8::text[], $9::text[])",
        [i.feedback_id for i in fresh],
        [first_of[i.feedback_id].lead_id for i in fresh],
        [i.outcome for i in fresh],
        [i.reason for i in fresh],
        [i.by for i in fresh],
        [i.at for i in fresh],
        [first_of[i.feedback_id].result for i in fresh],
        [first_of[i.feedback_id].detail for i in fresh],
        [(first_of[i.feedback_id].transition or {}).get("transition_id") for i in fresh],
    )
    return batch


def count_feedback(metrics: Metrics, batch: FeedbackBatch, items: list[FeedbackRecord]) -> None:
    """Metrics of a committed feedback batch."""
    reasons = {i.feedback_id: i.reason for i in items}
    for result in batch.results:
        if result.duplicate:
            metrics.feedback.labels(result.outcome, "duplicate").inc()
            continue
        metrics.feedback.labels(result.outcome, result.result).inc()
        if result.result == APPLIED and result.outcome == "rejected":
            metrics.rejections.labels(metrics.reason_label(reasons.get(result.feedback_id))).inc()
    for stage, seconds, _ in batch.follow_ups:
        metrics.follow_up_seconds.labels(stage).observe(max(seconds, 0.0))


class FeedbackConsumer(EventConsumer):
    """Reads `sales-feedback` with the same fencing and commit order as the event consumer;
    feedback that cannot be applied goes to the DLQ with the reason in its headers."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.topic = self.settings.topic_feedback

    def parse(self, record: ConsumerRecord, now: float) -> FeedbackRecord | Rejection:
        try:
            doc = orjson.loads(record.value or b"")
        except orjson.JSONDecodeError as exc:
            return Rejection("invalid_json", f"not UTF-8 JSON: {exc}")
        try:
            return FeedbackRecord.model_validate(doc)
        except ValidationError as exc:
            problems = "; ".join(
                f"{'.'.join(str(p) for p in e['loc']) or 'body'}: {e['msg']}"
                for e in exc.errors()[:5]
            )
            return Rejection("schema", problems)

    async def apply(
        self,
        pg: asyncpg.Connection,
        engine: Engine,
        items: list[tuple[ConsumerRecord, Any]],
        now: float,
        report: BatchReport,
    ) -> list[store.OutboxRow]:
        feedback = [item for _, item in items]
        batch = await apply_feedback(pg, engine, feedback, now=now)
        report.extra = [(batch, feedback)]
        rows = await self.record(pg, engine, batch.effects, report)
        for (record, _), result in zip(items, batch.results, strict=True):
            if result.duplicate:
                report.duplicates += 1
            elif result.result == APPLIED:
                report.scored += 1
            else:
                code = "illegal_transition" if result.result == REFUSED else "unknown_lead"
                rows.append(self.dlq_row(record, Rejection(code, result.detail or code)))
                report.dlq_codes.append(code)
                report.invalid += 1
        return rows

    def count(self, report: BatchReport, elapsed: float, total: int) -> None:
        for batch, feedback in report.extra or ():
            count_feedback(self.metrics, batch, feedback)
