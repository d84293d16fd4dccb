"""Moves a person makes by hand: an admin setting a lead's stage, sales' word on an account.

Each is the work of one lead transaction: it locks what it changes, asks the pure core for
the move, keeps the effects and the audit entry in the same commit. They need only what
`MoveTransaction` offers, so they are tested on an in-memory stand-in
(tests/unit/test_manual_moves.py) as well as on the real database.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol

from scoring_service.effects import Effects
from scoring_service.engine import Engine
from scoring_service.pipeline import Workspace
from stage_router.accounts import account_feedback_move
from stage_router.lifecycle import IllegalFeedback, IllegalMove
from stage_router.records import AccountTransitionDoc, TransitionDoc


class MoveTransaction(Protocol):
    """What a manual move needs of its lead transaction (services/pipeline/lead_transaction.py)."""

    engine: Engine
    effects: Effects
    now: float

    async def lock_leads(self, lead_ids: Any, account_ids: Any = ()) -> Workspace: ...

    async def audit(
        self, *, actor: str, action: str, target: str | None, detail: dict[str, Any] | None
    ) -> None: ...

    async def account_transition_caused_by(
        self, account_id: str, cause: str
    ) -> AccountTransitionDoc | None: ...


class MoveProblem(Exception):
    """Why a manual move was not made: a stable `code` and the `message` in words."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code, self.message = code, message


class NotFound(MoveProblem):
    """The lead or account named does not exist."""


class Refused(MoveProblem):
    """The move is not one the lifecycle allows from where the lead or account stands."""


async def set_stage(
    tx: MoveTransaction, lead_id: str, *, stage: str, reason: str, by: str
) -> TransitionDoc:
    """The lead to `stage` (any stage but its own), with reason `manual` and the words why;
    its notifications and deadlines follow as for any other transition."""
    ws = await tx.lock_leads([lead_id])
    state = ws.leads.get(ws.canonical(lead_id))
    if state is None:
        raise NotFound("lead_not_found", f"no lead {lead_id!r}")
    try:
        effects = tx.engine.manual_move(
            state,
            to_stage=stage,
            reason=reason,
            caused_by=f"manual:{by}",
            at=tx.now,
            account=ws.accounts.get(state.account_id or ""),
            now=tx.now,
        )
    except IllegalMove as exc:
        raise Refused("illegal_transition", str(exc)) from exc
    ws.changed_leads.add(state.lead_id)
    tx.effects.extend(effects)
    [transition] = effects.transitions
    await tx.audit(
        actor=by,
        action="lead.stage",
        target=state.lead_id,
        detail={
            "from": transition["from_stage"],
            "to": transition["to_stage"],
            "reason": reason,
            "transition_id": transition["transition_id"],
        },
    )
    return transition


def _scores_named(engine: Engine, score: str | None) -> list[str]:
    """The score an adjustment names, or every score when it names none."""
    names = [s.name for s in engine.rules.book.scores]
    if score is not None and score not in names:
        raise Refused(
            "unknown_score", f"the active rule set has no score {score!r}: {', '.join(names)}"
        )
    return [score] if score is not None else names


def _adjustment_detail(
    scores: list[str],
    operation: str,
    value: float,
    reason: str,
    before: Mapping[str, Any],
    after: Mapping[str, Any],
    transition: Mapping[str, Any] | None,
) -> dict[str, Any]:
    """An adjustment's audit entry: what was asked, the engagement before and after."""
    return {
        "scores": scores,
        "operation": operation,
        "value": value,
        "reason": reason,
        "engagement_before": {name: before[name]["engagement"] for name in scores},
        "engagement_after": {name: after[name]["engagement"] for name in scores},
        "transition_id": transition["transition_id"] if transition else None,
    }


async def adjust(
    tx: MoveTransaction,
    lead_id: str,
    *,
    score: str | None,
    operation: str,
    value: float,
    reason: str,
    by: str,
) -> dict[str, Any]:
    """Set or change a lead's engagement in one score (or all), with the reason why: kept
    as an adjustment signal per score, audited; a stage it earns is a transition with
    reason `adjustment`. Returns the lead's scores after it, and that transition if any."""
    ws = await tx.lock_leads([lead_id])
    state = ws.leads.get(ws.canonical(lead_id))
    if state is None:
        raise NotFound("lead_not_found", f"no lead {lead_id!r}")
    scores = _scores_named(tx.engine, score)
    before = tx.engine.score_entries(state)
    effects = tx.engine.adjust(
        state,
        scores=scores,
        operation=operation,
        value=value,
        at=tx.now,
        caused_by=f"adjustment:{by}",
        detail=reason,
        account=ws.accounts.get(state.account_id or ""),
        now=tx.now,
    )
    ws.changed_leads.add(state.lead_id)
    tx.effects.extend(effects)
    after = tx.engine.score_entries(state)
    transition = effects.transitions[0] if effects.transitions else None
    await tx.audit(
        actor=by,
        action="lead.adjust",
        target=state.lead_id,
        detail=_adjustment_detail(scores, operation, value, reason, before, after, transition),
    )
    return {"lead_id": state.lead_id, "scores": after, "transition": transition}


async def adjust_account(
    tx: MoveTransaction,
    account_id: str,
    *,
    score: str | None,
    operation: str,
    value: float,
    reason: str,
    by: str,
) -> dict[str, Any]:
    """Set or change an account's engagement in one score (or all), with the reason why:
    added to its members' roll-up, audited; a stage it earns is a transition with reason
    `adjustment`."""
    ws = await tx.lock_leads([], [account_id])
    account = ws.accounts.get(account_id)
    if account is None:
        raise NotFound("account_not_found", f"no account {account_id!r}")
    scorer = tx.engine.accounts
    if scorer is None:
        raise Refused("accounts_not_scored", "the active rule set scores no accounts")
    scores = _scores_named(tx.engine, score)
    before = scorer.score_docs(account)
    scorer.adjust(account, scores=scores, operation=operation, value=value, at=tx.now)
    ws.changed_accounts.add(account_id)
    transition = None
    earned = scorer.earned(account, "adjustment")
    if earned is not None:
        scorer.move(
            account,
            earned,
            tx.effects.account_transitions,
            tx.effects.account_notifications,
            caused_by=f"adjustment:{by}",
            at=tx.now,
            now=tx.now,
            detail=reason,
        )
        transition = tx.effects.account_transitions[-1]
    after = scorer.score_docs(account)
    await tx.audit(
        actor=by,
        action="account.adjust",
        target=account_id,
        detail=_adjustment_detail(scores, operation, value, reason, before, after, transition),
    )
    return {"account_id": account_id, "scores": after, "transition": transition}


async def account_feedback(
    tx: MoveTransaction,
    account_id: str,
    *,
    feedback_id: str,
    outcome: str,
    reason: str | None,
    by: str,
) -> tuple[AccountTransitionDoc, bool]:
    """Sales' word on an account; idempotent on `feedback_id` (the earlier transition comes
    back, marked a duplicate)."""
    ws = await tx.lock_leads([], [account_id])
    earlier = await tx.account_transition_caused_by(account_id, feedback_id)
    if earlier is not None:
        return earlier, True
    account = ws.accounts.get(account_id)
    if account is None:
        raise NotFound("account_not_found", f"no account {account_id!r}")
    scorer = tx.engine.accounts
    if scorer is None:
        raise Refused("accounts_not_scored", "the active rule set scores no accounts")
    try:
        move = account_feedback_move(account.stage, outcome)
    except IllegalFeedback as exc:
        raise Refused("illegal_transition", str(exc)) from exc
    scorer.move(
        account,
        move,
        tx.effects.account_transitions,
        tx.effects.account_notifications,
        caused_by=feedback_id,
        at=tx.now,
        now=tx.now,
        detail=reason or f"by {by}",
    )
    ws.changed_accounts.add(account_id)
    return tx.effects.account_transitions[-1], False
