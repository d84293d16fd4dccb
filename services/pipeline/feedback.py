"""Sales feedback: the CRM's word on a lead, from `sales-feedback` or the HTTP API.

Both paths apply feedback the same way, in one transaction per batch: idempotent on
`feedback_id`, legal moves only (docs/guides/handoff.md), the lead's open follow-up deadline
answered, and the resulting transition and notifications written to the outbox.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import orjson
from aiokafka.structs import ConsumerRecord
from pydantic import ValidationError

from schemas.records import DeadLetterCode, FeedbackRecord
from scoring_service.effects import Effects
from scoring_service.engine import Engine
from scoring_service.intake import Rejection
from scoring_service.pipeline import Workspace
from services.adapters.postgres.record_store import FeedbackRow
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


class FeedbackTransaction(Protocol):
    """What applying feedback needs of its lead transaction (tested on an in-memory stand-in,
    tests/unit/test_feedback_decisions.py)."""

    engine: Engine
    effects: Effects
    now: float
    ws: Workspace

    async def lock_leads(self, lead_ids: Any, account_ids: Any = ()) -> Workspace: ...

    async def stored_feedback(self, feedback_ids: Sequence[str]) -> Mapping[str, Any]: ...

    async def answer_handoffs(self, answered: Sequence[tuple[str, str, float]]) -> list[Any]: ...

    async def save_feedback(self, rows: Sequence[FeedbackRow]) -> None: ...


async def apply_feedback(tx: FeedbackTransaction, items: list[FeedbackRecord]) -> FeedbackBatch:
    """Apply feedback in order inside the caller's lead transaction.

    The named leads are locked first (step 3 of the lock order), so the `feedback` and
    `handoffs` rows of those leads are read and written by one transaction at a time.
    """
    batch = FeedbackBatch()
    await tx.lock_leads({i.lead_id for i in items})
    stored = await tx.stored_feedback([i.feedback_id for i in items])
    fresh: list[FeedbackRecord] = []
    first_of: dict[str, FeedbackResult] = {}
    repeats: list[tuple[int, FeedbackResult]] = []
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
            # A repeat within the batch: answered as its first copy ends up (filled in below).
            repeats.append((len(batch.results), first_of[item.feedback_id]))
            batch.results.append(first_of[item.feedback_id])
        else:
            first_of[item.feedback_id] = FeedbackResult(
                item.feedback_id, item.lead_id, item.outcome, UNKNOWN_LEAD, reason=item.reason
            )
            fresh.append(item)
            batch.results.append(first_of[item.feedback_id])
    if not fresh:
        return batch
    await _apply_fresh(tx, fresh, first_of, batch)
    for index, first in repeats:
        batch.results[index] = FeedbackResult(
            first.feedback_id,
            first.lead_id,
            first.outcome,
            first.result,
            first.detail,
            duplicate=True,
        )
    return batch


async def _apply_fresh(
    tx: FeedbackTransaction,
    fresh: list[FeedbackRecord],
    first_of: dict[str, FeedbackResult],
    batch: FeedbackBatch,
) -> None:
    """Apply each first copy in order, answer the deadlines, record every outcome."""
    ws = tx.ws
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
        rows = await tx.answer_handoffs(answered)
        batch.follow_ups.extend((r["stage"], float(r["seconds"]), r["in_time"]) for r in rows)
    await tx.save_feedback(
        [
            (
                i.feedback_id,
                first_of[i.feedback_id].lead_id,
                i.outcome,
                i.reason,
                i.by,
                i.at,
                first_of[i.feedback_id].result,
                first_of[i.feedback_id].detail,
                transition["transition_id"]
                if (transition := first_of[i.feedback_id].transition)
                else None,
            )
            for i in fresh
        ]
    )


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

    def reads(self, items: list[FeedbackRecord]) -> None:
        """Feedback locks its own leads (apply_feedback), after the partitions' rows."""
        return None

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
