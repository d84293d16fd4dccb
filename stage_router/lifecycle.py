"""Lifecycle stages and the moves between them (docs/guides/handoff.md)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

LEAD: Final = "lead"
MQL: Final = "mql"
SAL: Final = "sal"
SQL: Final = "sql"
OPPORTUNITY: Final = "opportunity"
CUSTOMER: Final = "customer"
RECYCLED: Final = "recycled"
DISQUALIFIED: Final = "disqualified"

# Every lead stage, in lifecycle order; schemas.rule_set.Stage spells the same names for the
# contracts (tests/unit/test_lifecycle.py checks they agree).
STAGES: Final = (LEAD, MQL, SAL, SQL, OPPORTUNITY, CUSTOMER, RECYCLED, DISQUALIFIED)
# The stages past `lead`, in order: the funnel a lead is handed along.
FUNNEL: Final = (MQL, SAL, SQL, OPPORTUNITY, CUSTOMER)
# The stages scoring decides; sales, deadlines and admins decide the rest.
SCORING_STAGES: Final = (LEAD, MQL, SAL)

# Automatic promotion only ever moves up this ladder. A recycled lead starts again at the
# bottom: it re-enters mql when it earns the threshold again.
RANK: Final[dict[str, int]] = {
    LEAD: 0,
    RECYCLED: 0,
    MQL: 1,
    SAL: 2,
    SQL: 3,
    OPPORTUNITY: 4,
    CUSTOMER: 5,
}

# Sales feedback: outcome -> (stages it is legal from, stage it moves to).
FEEDBACK_MOVES: Final[dict[str, tuple[frozenset[str], str]]] = {
    "accepted": (frozenset({MQL}), SAL),
    "qualified": (frozenset({MQL, SAL}), SQL),
    "rejected": (frozenset({MQL, SAL, SQL}), RECYCLED),
    "converted": (frozenset({SQL}), OPPORTUNITY),
    "won": (frozenset({OPPORTUNITY}), CUSTOMER),
    "lost": (frozenset({OPPORTUNITY}), RECYCLED),
    "disqualified": (
        frozenset({LEAD, MQL, SAL, SQL, OPPORTUNITY, RECYCLED}),
        DISQUALIFIED,
    ),
}


@dataclass(frozen=True, slots=True)
class Move:
    """A stage change the router decided on, and why."""

    to_stage: str
    reason: str
    rule_id: str | None = None


class IllegalMove(ValueError):
    """A stage change the lifecycle does not allow."""


class IllegalFeedback(IllegalMove):
    """Sales feedback that the transition table does not allow from the lead's stage."""


def feedback_move(stage: str, outcome: str, reason: str | None = None) -> Move:
    """The move a sales outcome makes from `stage`, or IllegalFeedback saying why not."""
    if outcome not in FEEDBACK_MOVES:
        raise IllegalFeedback(f"unknown outcome {outcome!r}")
    legal_from, to_stage = FEEDBACK_MOVES[outcome]
    if stage not in legal_from:
        allowed = ", ".join(sorted(legal_from))
        raise IllegalFeedback(f"{outcome!r} is legal from {allowed}, not from {stage!r}")
    if outcome == "rejected" and not reason:
        raise IllegalFeedback("'rejected' needs a reason")
    return Move(to_stage, "sales_feedback")


SCORED_STAGES: Final = (MQL, SAL, SQL)


def _capped(stage: str, allowed_rank: int) -> str | None:
    """The highest of mql / sal / sql up to `stage` that requirements allow, if any."""
    best = None
    for candidate in SCORED_STAGES:
        if RANK[candidate] <= min(RANK[stage], allowed_rank):
            best = candidate
    return best


def threshold_stage(
    total: float, mql_threshold: float, sal_threshold: float, sql_threshold: float | None
) -> str | None:
    """The highest stage one score's thresholds give `total`, if any."""
    if sql_threshold is not None and total >= sql_threshold:
        return SQL
    return SAL if total >= sal_threshold else MQL if total >= mql_threshold else None


def automatic_move(
    *,
    stage: str,
    reached: str | None,
    trigger: tuple[str, str] | None,
    disqualify_rule: str | None,
    allowed_rank: int = RANK[SQL],
) -> Move | None:
    """The one move scoring makes after an event, if any.

    `reached` is the highest stage the lead's scores qualify it for (threshold_stage for
    one score; scoring_service.scores for several). `trigger` is (stage, rule_id) of the
    strongest instant-promotion rule that has fired and not yet been honoured. A jump (lead
    straight to sal) is a single move; an instant trigger wins over a threshold when both
    fire; nothing moves a disqualified lead. `allowed_rank` is the highest rank the lead's
    traits allow (exclusions and per-stage requirements): a move, triggered or not, goes no
    higher, and without mql's requirements nothing moves.
    """
    if stage == DISQUALIFIED:
        return None
    if disqualify_rule is not None:
        return Move(DISQUALIFIED, "disqualified", disqualify_rule)
    current = RANK[stage]
    by_threshold = reached
    threshold_rank = RANK[by_threshold] if by_threshold else -1
    if trigger is not None and RANK[trigger[0]] > current and RANK[trigger[0]] >= threshold_rank:
        target = _capped(trigger[0], allowed_rank)
        if target is not None and RANK[target] > current:
            return Move(target, "trigger", trigger[1])
        return None
    if by_threshold is not None and threshold_rank > current:
        target = _capped(by_threshold, allowed_rank)
        if target is not None and RANK[target] > current:
            return Move(target, "threshold")
    return None


def furthest_stage(a: str, b: str) -> str:
    """The stage a merged lead keeps: disqualification sticks, otherwise the higher rank."""
    if DISQUALIFIED in (a, b):
        return DISQUALIFIED
    if RANK[a] == RANK[b]:
        return a
    return a if RANK[a] > RANK[b] else b
