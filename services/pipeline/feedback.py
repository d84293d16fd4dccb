"""Sales feedback: the CRM's word on a lead, from `sales-feedback` or the HTTP API.

Both paths apply feedback the same way, in one transaction per batch: idempotent on
`feedback_id`, legal moves only (README: The sales handoff), the lead's open follow-up deadline
answered, and the resulting transition and notifications written to the outbox.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import orjson
from aiokafka.structs import ConsumerRecord
from pydantic import ValidationError

from schemas.records import DeadLetterCode, FeedbackRecord
from scoring_service.intake import Rejection
from services.adapters.postgres import record_store
from services.metrics import Metrics
from services.pipeline.batches import BatchReport
from services.pipeline.lead_transaction import LeadTransaction
from services.settings import Settings
from stage_router.lifecycle import IllegalFeedback
from stage_router.records import TransitionDoc

APPLIED, REFUSED, UNKNOWN_LEAD = "applied", "refused", "unknown_lead"


@dataclass(slots=True)
class FeedbackResult:
    feedback_id: str
    lead_id: str
    outcome: str
    result: str  # applied, refused, unknown_lead
    detail: str | None = None
    transition: TransitionDoc | None = None
    duplicate: bool = False
    reason: str | None = None


@dataclass(slots=True)
class FeedbackBatch:
    results: list[FeedbackResult] = field(default_factory=list)
    follow_ups: list[tuple[str, float, bool]] = field(default_factory=list)  # stage, s, in time


async def apply_feedback(tx: LeadTransaction, items: list[FeedbackRecord]) -> FeedbackBatch:
    """Apply feedback in order inside the caller's lead transaction.

    The named leads are locked first (step 3 of the lock order), so the `feedback` and
    `handoffs` rows of those leads are read and written by one transaction at a time.
    """
    batch = FeedbackBatch()
    await tx.lock_leads({i.lead_id for i in items})
    ws = tx.ws
    stored = {
        r["feedback_id"]: r
        for r in await tx.pg.fetch(
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
                item.feedback_id, item.lead_id, item.outcome, UNKNOWN_LEAD, reason=item.reason
            )
            fresh.append(item)
            batch.results.append(first_of[item.feedback_id])
    if not fresh:
        return batch
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
            effects = tx.engine.apply_feedback(
                state,
                outcome=item.outcome,
                reason=item.reason,
                feedback_id=item.feedback_id,
                at=item.at.timestamp(),
                account=ws.accounts.get(state.account_id or ""),
                now=tx.now,
            )
        except IllegalFeedback as exc:
            result.result, result.detail = REFUSED, str(exc)
            continue
        result.result = APPLIED
        result.transition = effects.transitions[0]
        ws.changed_leads.add(lead_id)
        answered.append((lead_id, item.feedback_id, item.at.timestamp()))
        tx.effects.extend(effects)
    if answered:
        # Any applied feedback answers the lead's open follow-up deadline.
        rows = await record_store.answer_handoffs(tx.pg, answered)
        batch.follow_ups.extend((r["stage"], float(r["seconds"]), r["in_time"]) for r in rows)
    await tx.pg.execute(
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
        [
            transition["transition_id"]
            if (transition := first_of[i.feedback_id].transition)
            else None
            for i in fresh
        ],
    )
    return batch


def count_feedback(metrics: Metrics, batch: FeedbackBatch) -> None:
    """Metrics of a committed feedback batch."""
    for result in batch.results:
        if result.duplicate:
            metrics.feedback.labels(result.outcome, "duplicate").inc()
            continue
        metrics.feedback.labels(result.outcome, result.result).inc()
        if result.result == APPLIED and result.outcome == "rejected":
            metrics.rejections.labels(metrics.reason_label(result.reason)).inc()
    for stage, seconds, _ in batch.follow_ups:
        metrics.follow_up_seconds.labels(stage).observe(max(seconds, 0.0))


class FeedbackHandler:
    """`sales-feedback`: the same fencing and commit order as events (one batch loop);
    feedback that cannot be applied goes to the DLQ with the reason in its headers."""

    loop = "feedback"

    def __init__(self, settings: Settings, metrics: Metrics) -> None:
        self.topic = settings.topic_feedback
        self.metrics = metrics

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
        tx: LeadTransaction,
        items: list[tuple[ConsumerRecord, FeedbackRecord]],
        report: BatchReport[FeedbackBatch],
        dead_letter: Callable[[ConsumerRecord, Rejection], None],
    ) -> None:
        batch = await apply_feedback(tx, [item for _, item in items])
        report.outcomes.append(batch)
        for (record, _), result in zip(items, batch.results, strict=True):
            if result.duplicate:
                report.duplicates += 1
            elif result.result == APPLIED:
                report.scored += 1
            else:
                code: DeadLetterCode = (
                    "illegal_transition" if result.result == REFUSED else "unknown_lead"
                )
                dead_letter(record, Rejection(code, result.detail or code))

    def count(self, report: BatchReport[FeedbackBatch]) -> None:
        for batch in report.outcomes:
            count_feedback(self.metrics, batch)
