"""Account stages and the moves between them (docs/concepts/accounts.md). Pure.

    target -> engaged -> mqa -> opportunity -> customer, and disqualified

Scoring moves an account up to `mqa` only (engaged: its members' engagement, the roll-up,
reached the engaged threshold; mqa: its total score reached the mqa threshold with every
required committee role covered); it never moves an account down. Sales moves it further:
a member lead's opportunity or win moves its account with it, and account feedback can do
the rest.
"""

from __future__ import annotations

from typing import Final

from stage_router.lifecycle import IllegalFeedback, Move

TARGET: Final = "target"
ENGAGED: Final = "engaged"
MQA: Final = "mqa"
OPPORTUNITY: Final = "opportunity"
CUSTOMER: Final = "customer"
DISQUALIFIED: Final = "disqualified"

# Every account stage, in order; schemas.records.AccountStage spells the same names.
ACCOUNT_STAGES: Final = (TARGET, ENGAGED, MQA, OPPORTUNITY, CUSTOMER, DISQUALIFIED)
# The stages an account climbs through once its members engage.
ACCOUNT_FUNNEL: Final = (ENGAGED, MQA, OPPORTUNITY, CUSTOMER)

ACCOUNT_RANK: Final[dict[str, int]] = {TARGET: 0, ENGAGED: 1, MQA: 2, OPPORTUNITY: 3, CUSTOMER: 4}

# Account feedback: outcome -> (stages it is legal from, stage it moves to).
ACCOUNT_FEEDBACK_MOVES: Final[dict[str, tuple[frozenset[str], str]]] = {
    "opportunity": (frozenset({TARGET, ENGAGED, MQA}), OPPORTUNITY),
    "won": (frozenset({TARGET, ENGAGED, MQA, OPPORTUNITY}), CUSTOMER),
    # A lost deal goes back to nurture: the account qualifies again on its next member
    # activity if its score and committee still say so.
    "lost": (frozenset({OPPORTUNITY}), TARGET),
    "disqualified": (frozenset({TARGET, ENGAGED, MQA, OPPORTUNITY}), DISQUALIFIED),
    "reopened": (frozenset({DISQUALIFIED}), TARGET),
}

# A member lead's stage that carries its account along (lead stage -> account stage).
FOLLOWS_LEAD: Final[dict[str, str]] = {"opportunity": OPPORTUNITY, "customer": CUSTOMER}


def automatic_account_move(
    *,
    stage: str,
    engagement: float,
    total: float,
    engaged_threshold: float,
    mqa_threshold: float,
    required_covered: bool,
) -> Move | None:
    """The one move scoring makes for an account after a member's activity, if any: the
    highest stage it has earned, in a single move (target straight to mqa when both hold)."""
    rank = ACCOUNT_RANK.get(stage)
    if rank is None or rank >= ACCOUNT_RANK[MQA]:
        return None
    if total >= mqa_threshold and required_covered:
        return Move(MQA, "qualified")
    if engagement >= engaged_threshold and rank < ACCOUNT_RANK[ENGAGED]:
        return Move(ENGAGED, "engaged")
    return None


def account_feedback_move(stage: str, outcome: str) -> Move:
    """The move an account outcome makes from `stage`, or IllegalFeedback saying why not."""
    if outcome not in ACCOUNT_FEEDBACK_MOVES:
        known = ", ".join(sorted(ACCOUNT_FEEDBACK_MOVES))
        raise IllegalFeedback(f"unknown account outcome {outcome!r} (use {known})")
    legal_from, to_stage = ACCOUNT_FEEDBACK_MOVES[outcome]
    if stage not in legal_from:
        allowed = ", ".join(sorted(legal_from))
        raise IllegalFeedback(f"{outcome!r} is legal from {allowed}, not from {stage!r}")
    return Move(to_stage, "sales_feedback")


def follow_lead(account_stage: str, lead_stage: str) -> Move | None:
    """A member lead became an opportunity or a customer: its account follows, unless it is
    already as far."""
    to_stage = FOLLOWS_LEAD.get(lead_stage)
    if to_stage is None or account_stage == to_stage:
        return None
    if ACCOUNT_RANK.get(account_stage, -1) >= ACCOUNT_RANK[to_stage]:
        return None
    return Move(to_stage, "sales_feedback")
