"""Sales feedback's decisions on an in-memory stand-in of the lead transaction: what is applied,
refused, unknown or a repeat, which deadlines it answers and what it records. The same handler
runs on the real database in tests/integration/test_handoff.py."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from schemas.records import FeedbackRecord
from scoring_service.effects import Effects
from scoring_service.engine import Engine
from scoring_service.pipeline import Workspace
from scoring_service.rule_set_files import starter_ruleset
from scoring_service.state import LeadState
from services.pipeline.feedback import APPLIED, REFUSED, UNKNOWN_LEAD, apply_feedback

NOW = 1_790_000_000.0
AT = datetime.fromtimestamp(NOW - 60, UTC)


@dataclass
class InMemoryTransaction:
    leads: dict[str, LeadState] = field(default_factory=dict)
    stored: dict[str, dict[str, Any]] = field(default_factory=dict)
    engine: Engine = field(default_factory=lambda: Engine(starter_ruleset()))
    effects: Effects = field(default_factory=Effects)
    now: float = NOW
    ws: Workspace = field(default_factory=Workspace)
    answered: list[tuple[str, str, float]] = field(default_factory=list)
    saved: list[tuple[Any, ...]] = field(default_factory=list)

    async def lock_leads(self, lead_ids: Any, account_ids: Any = ()) -> Workspace:
        self.ws = Workspace(leads={i: self.leads[i] for i in lead_ids if i in self.leads})
        return self.ws

    async def stored_feedback(self, feedback_ids: Any) -> dict[str, dict[str, Any]]:
        return {i: self.stored[i] for i in feedback_ids if i in self.stored}

    async def answer_handoffs(self, answered: Any) -> list[dict[str, Any]]:
        self.answered.extend(answered)
        return [{"stage": "sal", "seconds": 60.0, "in_time": True} for _ in answered]

    async def save_feedback(self, rows: Any) -> None:
        self.saved.extend(rows)


def feedback(feedback_id: str, lead_id: str, outcome: str) -> FeedbackRecord:
    return FeedbackRecord(
        feedback_id=feedback_id, lead_id=lead_id, outcome=outcome, at=AT, by="sam"
    )


def apply(tx: InMemoryTransaction, *items: FeedbackRecord) -> Any:
    return asyncio.run(apply_feedback(tx, list(items)))


def mql(lead_id: str) -> LeadState:
    return LeadState(lead_id, stage="mql", stage_entered_at=NOW - 3600)


def test_accepted_feedback_moves_the_lead_answers_its_deadline_and_is_recorded() -> None:
    tx = InMemoryTransaction(leads={"u-1": mql("u-1")})

    batch = apply(tx, feedback("f-1", "u-1", "accepted"))

    [result] = batch.results
    assert (result.result, result.duplicate) == (APPLIED, False)
    assert (result.transition["from_stage"], result.transition["to_stage"]) == ("mql", "sal")
    assert tx.effects.transitions == [result.transition]
    assert tx.answered == [("u-1", "f-1", AT.timestamp())]
    assert batch.follow_ups == [("sal", 60.0, True)]
    assert [(row[0], row[1], row[2], row[6], row[8]) for row in tx.saved] == [
        ("f-1", "u-1", "accepted", APPLIED, result.transition["transition_id"])
    ]


def test_a_move_the_table_forbids_is_refused_recorded_and_answers_no_deadline() -> None:
    tx = InMemoryTransaction(leads={"u-1": LeadState("u-1", stage="lead")})

    [result] = apply(tx, feedback("f-1", "u-1", "won")).results

    assert result.result == REFUSED and result.detail
    assert tx.effects.transitions == [] and tx.answered == []
    assert [(row[0], row[6]) for row in tx.saved] == [("f-1", REFUSED)]


def test_feedback_for_an_unknown_lead_is_recorded_as_such() -> None:
    tx = InMemoryTransaction()

    [result] = apply(tx, feedback("f-1", "nobody", "accepted")).results

    assert result.result == UNKNOWN_LEAD
    assert [(row[0], row[6]) for row in tx.saved] == [("f-1", UNKNOWN_LEAD)]


def test_a_repeat_in_one_batch_is_applied_once() -> None:
    tx = InMemoryTransaction(leads={"u-1": mql("u-1")})

    first, again = apply(
        tx, feedback("f-1", "u-1", "accepted"), feedback("f-1", "u-1", "accepted")
    ).results

    assert (first.duplicate, again.duplicate) == (False, True)
    assert again.result == first.result == APPLIED
    assert len(tx.effects.transitions) == 1 and len(tx.saved) == 1


def test_feedback_stored_before_is_answered_as_then_and_changes_nothing() -> None:
    stored = {
        "feedback_id": "f-1",
        "lead_id": "u-1",
        "outcome": "accepted",
        "result": APPLIED,
        "detail": None,
        "transition_id": "u-1:2",
    }
    tx = InMemoryTransaction(leads={"u-1": mql("u-1")}, stored={"f-1": stored})

    [result] = apply(tx, feedback("f-1", "u-1", "accepted")).results

    assert (result.result, result.duplicate) == (APPLIED, True)
    assert tx.effects.transitions == [] and tx.saved == [] and tx.answered == []
