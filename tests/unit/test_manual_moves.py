"""The manual moves' decisions on an in-memory stand-in of the lead transaction.

The real transaction (services/pipeline/lead_transaction.py) locks rows and writes them; what
a move decides (found or not, allowed or not, what it emits and audits, a repeated feedback
answered once) needs none of that, so it is checked here without a database. The same moves
run on the real one in tests/integration (test_admin_api, test_accounts).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

import pytest

from scoring_service.effects import Effects
from scoring_service.engine import Engine
from scoring_service.pipeline import Workspace
from scoring_service.rule_set_files import starter_ruleset
from scoring_service.state import Account, LeadState
from services.pipeline import manual_moves
from stage_router.records import AccountTransitionDoc

NOW = 1_790_000_000.0


@dataclass
class InMemoryTransaction:
    """Holds the leads and accounts a test gives it; records what a commit would write."""

    leads: dict[str, LeadState] = field(default_factory=dict)
    accounts: dict[str, Account] = field(default_factory=dict)
    earlier: dict[tuple[str, str], AccountTransitionDoc] = field(default_factory=dict)
    engine: Engine = field(default_factory=lambda: Engine(starter_ruleset()))
    effects: Effects = field(default_factory=Effects)
    now: float = NOW
    audited: list[dict[str, Any]] = field(default_factory=list)
    ws: Workspace = field(default_factory=Workspace)

    async def lock_leads(self, lead_ids: Any, account_ids: Any = ()) -> Workspace:
        self.ws = Workspace(
            leads={i: self.leads[i] for i in lead_ids if i in self.leads},
            accounts={i: self.accounts[i] for i in account_ids if i in self.accounts},
        )
        return self.ws

    async def audit(
        self, *, actor: str, action: str, target: str | None, detail: dict[str, Any] | None
    ) -> None:
        self.audited.append({"actor": actor, "action": action, "target": target, **(detail or {})})

    async def account_transition_caused_by(
        self, account_id: str, cause: str
    ) -> AccountTransitionDoc | None:
        return self.earlier.get((account_id, cause))


def run(coroutine: Any) -> Any:
    return asyncio.run(coroutine)


def test_a_stage_set_by_hand_emits_one_manual_transition_and_audits_it() -> None:
    tx = InMemoryTransaction(leads={"u-1": LeadState("u-1", stage="mql", stage_entered_at=NOW)})

    transition = run(manual_moves.set_stage(tx, "u-1", stage="sal", reason="called us", by="ana"))

    assert (transition["from_stage"], transition["to_stage"]) == ("mql", "sal")
    assert transition["reason"] == "manual"
    assert transition["caused_by"] == "manual:ana"
    assert tx.effects.transitions == [transition]
    assert tx.ws.changed_leads == {"u-1"}
    assert tx.audited == [
        {
            "actor": "ana",
            "action": "lead.stage",
            "target": "u-1",
            "from": "mql",
            "to": "sal",
            "reason": "called us",
            "transition_id": transition["transition_id"],
        }
    ]


def test_a_stage_set_by_hand_on_an_unknown_lead_is_not_found_and_changes_nothing() -> None:
    tx = InMemoryTransaction()

    with pytest.raises(manual_moves.NotFound) as raised:
        run(manual_moves.set_stage(tx, "nobody", stage="sal", reason="x", by="ana"))

    assert raised.value.code == "lead_not_found"
    assert tx.effects.transitions == [] and tx.audited == []


def test_the_stage_a_lead_is_in_cannot_be_set_again() -> None:
    tx = InMemoryTransaction(leads={"u-1": LeadState("u-1", stage="sal", stage_entered_at=NOW)})

    with pytest.raises(manual_moves.Refused) as raised:
        run(manual_moves.set_stage(tx, "u-1", stage="sal", reason="x", by="ana"))

    assert raised.value.code == "illegal_transition"
    assert tx.effects.transitions == [] and tx.audited == [] and tx.ws.changed_leads == set()


def account_feedback(tx: InMemoryTransaction, outcome: str, feedback_id: str = "f-1") -> Any:
    return run(
        manual_moves.account_feedback(
            tx, "acct-1", feedback_id=feedback_id, outcome=outcome, reason=None, by="sam"
        )
    )


def test_an_opportunity_on_an_account_moves_it_and_says_who() -> None:
    tx = InMemoryTransaction(accounts={"acct-1": Account("acct-1", stage="mqa")})

    transition, duplicate = account_feedback(tx, "opportunity")

    assert duplicate is False
    assert (transition["from_stage"], transition["to_stage"]) == ("mqa", "opportunity")
    assert transition["caused_by"] == "f-1"
    assert tx.effects.account_transitions == [transition]
    assert tx.ws.changed_accounts == {"acct-1"}


def test_account_feedback_seen_before_returns_the_earlier_transition_and_moves_nothing() -> None:
    earlier: AccountTransitionDoc = {"transition_id": "acct-1:3"}  # type: ignore[typeddict-item]
    tx = InMemoryTransaction(
        accounts={"acct-1": Account("acct-1", stage="opportunity")},
        earlier={("acct-1", "f-1"): earlier},
    )

    transition, duplicate = account_feedback(tx, "opportunity")

    assert duplicate is True and transition is earlier
    assert tx.effects.account_transitions == [] and tx.ws.changed_accounts == set()


def test_account_feedback_the_table_forbids_is_refused() -> None:
    tx = InMemoryTransaction(accounts={"acct-1": Account("acct-1", stage="target")})

    with pytest.raises(manual_moves.Refused) as raised:
        account_feedback(tx, "lost")  # only an opportunity can be lost

    assert raised.value.code == "illegal_transition"
    assert tx.effects.account_transitions == []


def test_account_feedback_on_an_unknown_account_is_not_found() -> None:
    with pytest.raises(manual_moves.NotFound) as raised:
        account_feedback(InMemoryTransaction(), "won")

    assert raised.value.code == "account_not_found"


def test_account_feedback_under_rules_without_accounts_is_refused() -> None:
    without_accounts = Engine(starter_ruleset())
    without_accounts.accounts = None
    tx = InMemoryTransaction(
        accounts={"acct-1": Account("acct-1", stage="mqa")}, engine=without_accounts
    )

    with pytest.raises(manual_moves.Refused) as raised:
        account_feedback(tx, "won")

    assert raised.value.code == "accounts_not_scored"
