"""The transition and notification records (docs/reference/contracts.md, Topics). Pure.

The records are typed dictionaries: mypy checks every key where they are built and read,
and at run time they are the plain dicts orjson turns into the published JSON fastest (one
per stage change, on the per-event path). A test validates every record a generated
workload produces against the JSON Schemas of docs/asyncapi.yaml, and another that these
types name the same fields as the pydantic models in `schemas.records`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final, Literal, TypedDict

from schemas.timefmt import iso
from stage_router.lifecycle import RANK, SAL

# A notification is first addressed to a queue; the shell then names the queue's next owner
# in turn (round-robin needs a shared counter, which lives in the database).
QUEUE_PREFIX: Final = "queue:"


class ScoreDoc(TypedDict):
    total: float
    fit: float
    engagement: float


class ScoreEntryDoc(TypedDict):
    """One of a lead's scores, with its grade label (None when it has no grade bands)."""

    total: float
    fit: float
    engagement: float
    label: str | None


class TransitionDoc(TypedDict):
    """A value on `lead-status-transitions`."""

    transition_id: str
    lead_id: str
    account_id: str | None
    from_stage: str
    to_stage: str
    reason: str
    # The words behind the move: a sales rejection's reason, an admin's for a manual move.
    reason_detail: str | None
    rule_id: str | None
    score: ScoreDoc
    ruleset_version: int
    caused_by: str | None
    occurred_at: str
    emitted_at: str
    # The person's role in their account's buying committee, and the account's total
    # score at the moment (None when the rule set does not score accounts).
    committee_role: str | None
    account_score: float | None
    # Every score by name (`default` is `score` again), the scores that made this move (a
    # threshold crossed, a trigger's), and the lead's grade label.
    scores: dict[str, ScoreEntryDoc]
    qualified_by: list[str]
    label: str | None
    # The lead's buyer-journey phase after the event that moved it (None without a journey).
    journey_phase: str | None


class SignalDoc(TypedDict):
    """One rule's share of a score. The contributions of a score's signals add up to its
    total, to the cent."""

    rule_id: str
    description: str
    category: Literal["fit", "engagement"]
    # The rule's points per hit (None when the rule is not in the rule set explaining it).
    points: float | None
    hits: int
    # Hits a limit did not count.
    ignored: int
    # What the rule adds to the score now: decayed points for engagement, points for fit.
    contribution: float
    last_seen: str | None


class ProfileDoc(TypedDict):
    email: str | None
    title: str | None
    company: str | None


class NotificationDoc(TypedDict):
    """A value on `sales-notifications`."""

    notification_id: str
    # `qualified`: a further score reached a stage the lead is already in (no new move).
    type: Literal["promotion", "sla_breach", "qualified"]
    lead_id: str
    stage: str
    priority: Literal["hot", "warm"]
    score: ScoreDoc
    signals: list[SignalDoc]
    profile: ProfileDoc
    owner: str
    respond_by: str | None
    ruleset_version: int
    occurred_at: str
    committee_role: str | None
    account_score: float | None
    scores: dict[str, ScoreEntryDoc]
    qualified_by: list[str]
    label: str | None
    # The named scores' explanations (the default score's is `signals`).
    signals_by_score: dict[str, list[SignalDoc]]
    # The lead's buyer-journey phase at the handoff (None without a journey).
    journey_phase: str | None


class AccountScoreDoc(TypedDict):
    total: float
    fit: float
    engagement: float
    coverage: float


class MemberDoc(TypedDict):
    """A member's share of its account's engagement (the counted members add up to it)."""

    lead_id: str
    role: str | None
    contribution: float


class AccountTransitionDoc(TypedDict):
    """A value on `account-status-transitions`."""

    transition_id: str
    account_id: str
    from_stage: str
    to_stage: str
    reason: str
    reason_detail: str | None
    score: AccountScoreDoc
    roles_covered: list[str]
    roles_missing: list[str]
    top_members: list[MemberDoc]
    ruleset_version: int
    caused_by: str | None
    occurred_at: str
    emitted_at: str
    # Every score of the account by name (`default` is `score` again).
    scores: dict[str, AccountScoreDoc]


class AccountProfileDoc(TypedDict):
    name: str | None
    domain: str | None
    industry: str | None


class AccountNotificationDoc(TypedDict):
    """An `account_qualified` value on `sales-notifications`."""

    notification_id: str
    type: Literal["account_qualified"]
    account_id: str
    stage: Literal["mqa"]
    priority: Literal["hot"]
    score: AccountScoreDoc
    roles_covered: list[str]
    roles_missing: list[str]
    top_members: list[MemberDoc]
    profile: AccountProfileDoc
    owner: str
    ruleset_version: int
    occurred_at: str
    scores: dict[str, AccountScoreDoc]


@dataclass(frozen=True, slots=True)
class Handoff:
    """A stage entered with a follow-up SLA: sales must respond by `respond_by`."""

    lead_id: str
    transition_id: str
    stage: str
    queue: str
    entered_at: float
    respond_by: float


# Below this many cents, a value times 100 is within 1e-7 of its exact product, so
# whether it lies on a half cent is decided well outside that error (`to_cents`).
EXACT_CENTS: Final = 1e9
HALF_CENT_MARGIN: Final = 1e-6


def to_cents(value: float) -> float:
    """`round(value, 2)`, the same float to the bit (the sign of a zero too), without
    Python's decimal conversion unless the value lies within a millionth of a cent of a
    half cent. Every record rounds each of its scores' parts, and with `round` one score's
    three took about 10,000 instructions (docs/performance/history.md)."""
    scaled = value * 100.0
    if -EXACT_CENTS < scaled < EXACT_CENTS:  # also False for NaN
        floor = math.floor(scaled)
        above = scaled - floor
        if abs(above - 0.5) > HALF_CENT_MARGIN:
            rounded = (floor + 1 if above > 0.5 else floor) / 100.0
            return rounded if rounded else math.copysign(0.0, value)
    return round(value, 2)


def score_doc(fit: float, engagement: float) -> ScoreDoc:
    """Scores as published: two decimals, so float noise never reaches a CRM."""
    fit_r, eng_r = to_cents(fit), to_cents(engagement)
    return {"total": to_cents(fit_r + eng_r), "fit": fit_r, "engagement": eng_r}


def transition_record(
    *,
    lead_id: str,
    seq: int,
    account_id: str | None,
    from_stage: str,
    to_stage: str,
    reason: str,
    rule_id: str | None,
    score: ScoreDoc,
    ruleset_version: int,
    caused_by: str | None,
    occurred_at: float,
    emitted_at: float,
    reason_detail: str | None = None,
    committee_role: str | None = None,
    account_score: float | None = None,
    scores: dict[str, ScoreEntryDoc] | None = None,
    qualified_by: list[str] | None = None,
    label: str | None = None,
    journey_phase: str | None = None,
) -> TransitionDoc:
    return {
        "transition_id": f"{lead_id}:{seq}",
        "lead_id": lead_id,
        "account_id": account_id,
        "from_stage": from_stage,
        "to_stage": to_stage,
        "reason": reason,
        "reason_detail": reason_detail,
        "rule_id": rule_id,
        "score": score,
        "ruleset_version": ruleset_version,
        "caused_by": caused_by,
        "occurred_at": iso(occurred_at),
        "emitted_at": iso(emitted_at),
        "committee_role": committee_role,
        "account_score": account_score,
        "scores": scores if scores is not None else {"default": {**score, "label": None}},
        "qualified_by": qualified_by or [],
        "label": label,
        "journey_phase": journey_phase,
    }


def account_score_doc(fit: float, engagement: float, coverage: float) -> AccountScoreDoc:
    fit_r, eng_r, cov_r = to_cents(fit), to_cents(engagement), to_cents(coverage)
    return {
        "total": to_cents(fit_r + eng_r + cov_r),
        "fit": fit_r,
        "engagement": eng_r,
        "coverage": cov_r,
    }


def account_transition_record(
    *,
    account_id: str,
    seq: int,
    from_stage: str,
    to_stage: str,
    reason: str,
    score: AccountScoreDoc,
    roles_covered: list[str],
    roles_missing: list[str],
    top_members: list[MemberDoc],
    ruleset_version: int,
    caused_by: str | None,
    occurred_at: float,
    emitted_at: float,
    reason_detail: str | None = None,
    scores: dict[str, AccountScoreDoc] | None = None,
) -> AccountTransitionDoc:
    return {
        "transition_id": f"{account_id}:{seq}",
        "account_id": account_id,
        "from_stage": from_stage,
        "to_stage": to_stage,
        "reason": reason,
        "reason_detail": reason_detail,
        "score": score,
        "roles_covered": roles_covered,
        "roles_missing": roles_missing,
        "top_members": top_members,
        "ruleset_version": ruleset_version,
        "caused_by": caused_by,
        "occurred_at": iso(occurred_at),
        "emitted_at": iso(emitted_at),
        "scores": scores if scores is not None else {"default": score},
    }


def account_profile(traits: Mapping[str, Any]) -> AccountProfileDoc:
    name, domain, industry = traits.get("name"), traits.get("domain"), traits.get("industry")
    return {
        "name": name if isinstance(name, str) else None,
        "domain": domain if isinstance(domain, str) else None,
        "industry": industry if isinstance(industry, str) else None,
    }


def account_qualified_record(
    *, transition: AccountTransitionDoc, profile_doc: AccountProfileDoc, owner: str
) -> AccountNotificationDoc:
    """The sales notification for an account entering `mqa`, with the same explanation
    as its transition."""
    return {
        "notification_id": f"{transition['transition_id']}:account_qualified",
        "type": "account_qualified",
        "account_id": transition["account_id"],
        "stage": "mqa",
        "priority": "hot",
        "score": transition["score"],
        "roles_covered": transition["roles_covered"],
        "roles_missing": transition["roles_missing"],
        "top_members": transition["top_members"],
        "profile": profile_doc,
        "owner": owner,
        "ruleset_version": transition["ruleset_version"],
        "occurred_at": transition["occurred_at"],
        "scores": transition["scores"],
    }


def apportion(values: list[float], total: float) -> list[float]:
    """Round `values` to the cent so that they add up to `total` rounded to the cent.

    Largest remainder: each value is rounded down, and the cents still missing go to the
    values that lost most. Rounding each value on its own would leave the sum a cent or more
    off the total, which is exactly the "the log does not match the score" complaint. When
    the values do not add up to the total (float noise), the difference lands on the largest.
    """
    if not values:
        return []
    exact = [v * 100 for v in values]
    cents = [math.floor(x) for x in exact]
    missing = round(total * 100)
    for c in cents:
        missing -= c
    if 0 < missing <= len(cents):
        # Sorted as (loss, position) tuples rather than by a key function: a record carries
        # one explanation per score, and the compiled core calls no Python per item this way.
        by_loss = sorted([(cents[i] - exact[i], i) for i in range(len(cents))])
        for _, i in by_loss[:missing]:
            cents[i] += 1
    elif missing:
        largest = 0
        for i in range(1, len(exact)):
            if abs(exact[i]) > abs(exact[largest]):
                largest = i  # the first among equals
        cents[largest] += missing
    return [c / 100 for c in cents]


def explanation(
    signals: list[SignalDoc], fit: float, engagement: float
) -> tuple[ScoreDoc, list[SignalDoc]]:
    """A score and the signals behind it (their contributions exact), largest first, each
    contribution rounded so that fit signals add up to the fit and engagement signals to the
    engagement, to the cent."""
    score = score_doc(fit, engagement)
    fits: list[SignalDoc] = []
    engagements: list[SignalDoc] = []
    for signal in signals:
        (fits if signal["category"] == "fit" else engagements).append(signal)
    for members, total in ((fits, score["fit"]), (engagements, score["engagement"])):
        shares = apportion([s["contribution"] for s in members], total)
        for i in range(len(members)):  # a zip(strict=True) is a Python call when compiled
            members[i]["contribution"] = shares[i]
    # Largest first, by rule id among equals (and in the given order among the same ids).
    order = sorted([(-abs(s["contribution"]), s["rule_id"], i) for i, s in enumerate(signals)])
    signals[:] = [signals[i] for _, _, i in order]
    return score, signals


def profile(traits: Mapping[str, Any], account_traits: Mapping[str, Any] | None) -> ProfileDoc:
    company = traits.get("company")
    company_name = company.get("name") if isinstance(company, dict) else company
    if not company_name and account_traits:
        company_name = account_traits.get("name")
    email, title = traits.get("email"), traits.get("title")
    # Traits are whatever the sender put there; the record promises text or null.
    return {
        "email": email if isinstance(email, str) else None,
        "title": title if isinstance(title, str) else None,
        "company": company_name if isinstance(company_name, str) else None,
    }


def breach_record(
    *,
    handoff_transition_id: str,
    lead_id: str,
    stage: str,
    score: ScoreDoc,
    signals: list[SignalDoc],
    profile_doc: ProfileDoc,
    owner: str,
    respond_by: float,
    ruleset_version: int,
    committee_role: str | None = None,
    account_score: float | None = None,
    scores: dict[str, ScoreEntryDoc] | None = None,
    label: str | None = None,
    journey_phase: str | None = None,
    signals_by_score: dict[str, list[SignalDoc]] | None = None,
) -> NotificationDoc:
    """The notification that a handoff's follow-up deadline passed unanswered: the same
    picture of the lead as its promotion gave (scores, label, role, account)."""
    return {
        "notification_id": f"{handoff_transition_id}:sla_breach",
        "type": "sla_breach",
        "lead_id": lead_id,
        "stage": stage,
        "priority": "hot",
        "score": score,
        "signals": signals,
        "profile": profile_doc,
        "owner": owner,
        "respond_by": iso(respond_by),
        "ruleset_version": ruleset_version,
        "occurred_at": iso(respond_by),
        "committee_role": committee_role,
        "account_score": account_score,
        "scores": scores if scores is not None else {"default": {**score, "label": None}},
        "qualified_by": [],
        "label": label,
        "signals_by_score": signals_by_score or {},
        "journey_phase": journey_phase,
    }


def promotion_record(
    *,
    transition: TransitionDoc,
    signals: list[SignalDoc],
    profile_doc: ProfileDoc,
    owner: str,
    sla_seconds: float | None,
    occurred_at: float,
    signals_by_score: dict[str, list[SignalDoc]] | None = None,
) -> NotificationDoc:
    """The sales notification for entering a stage listed in `notify_on`."""
    stage = transition["to_stage"]
    return {
        "notification_id": f"{transition['transition_id']}:promotion",
        "type": "promotion",
        "lead_id": transition["lead_id"],
        "stage": stage,
        "priority": "hot" if RANK.get(stage, 0) >= RANK[SAL] else "warm",
        "score": transition["score"],
        "signals": signals,
        "profile": profile_doc,
        "owner": owner,
        "respond_by": iso(occurred_at + sla_seconds) if sla_seconds else None,
        "ruleset_version": transition["ruleset_version"],
        "occurred_at": iso(occurred_at),
        "committee_role": transition["committee_role"],
        "account_score": transition["account_score"],
        "scores": transition["scores"],
        "qualified_by": transition["qualified_by"],
        "label": transition["label"],
        "signals_by_score": signals_by_score or {},
        "journey_phase": transition["journey_phase"],
    }


def qualified_record(
    *,
    lead_id: str,
    seq: int,
    score_name: str,
    stage: str,
    score: ScoreDoc,
    scores: dict[str, ScoreEntryDoc],
    label: str | None,
    signals: list[SignalDoc],
    signals_by_score: dict[str, list[SignalDoc]],
    profile_doc: ProfileDoc,
    owner: str,
    ruleset_version: int,
    occurred_at: float,
    committee_role: str | None,
    account_score: float | None,
    journey_phase: str | None = None,
) -> NotificationDoc:
    """A further score qualified a lead for a stage it is already in: sales of that score
    hear of it (the lead does not move again)."""
    return {
        "notification_id": f"{lead_id}:{seq}:qualified:{score_name}",
        "type": "qualified",
        "lead_id": lead_id,
        "stage": stage,
        "priority": "hot" if RANK.get(stage, 0) >= RANK[SAL] else "warm",
        "score": score,
        "signals": signals,
        "profile": profile_doc,
        "owner": owner,
        "respond_by": None,
        "ruleset_version": ruleset_version,
        "occurred_at": iso(occurred_at),
        "committee_role": committee_role,
        "account_score": account_score,
        "scores": scores,
        "qualified_by": [score_name],
        "label": label,
        "signals_by_score": signals_by_score,
        "journey_phase": journey_phase,
    }


# -- the buyer journey -----------------------------------------------------------------------


class JourneyMoveDoc(TypedDict):
    """A lead or an account moved between buyer-journey phases (stored, shown in its
    history and the journey report; docs/concepts/journey.md)."""

    subject: Literal["lead", "account"]
    subject_id: str
    seq: int
    from_phase: str | None
    # None: an account no longer enough members placed in any phase.
    to_phase: str | None
    # evidence: an event of a later phase; quiet: no evidence for the phase's quiet time;
    # merge: an anonymous visitor's journey joined an identified lead's; members: the
    # account's members' phases.
    reason: Literal["evidence", "quiet", "merge", "members"]
    rule_id: str | None
    caused_by: str | None
    # The event's content (a page path, a track event name) and channel.
    content: str | None
    channel: str | None
    # The content seen in the phase left, the latest last.
    seen: list[str]
    occurred_at: float
    ruleset_version: int


def journey_move_record(
    *,
    subject: Literal["lead", "account"],
    subject_id: str,
    seq: int,
    from_phase: str | None,
    to_phase: str | None,
    reason: Literal["evidence", "quiet", "merge", "members"],
    occurred_at: float,
    ruleset_version: int,
    rule_id: str | None = None,
    caused_by: str | None = None,
    content: str | None = None,
    channel: str | None = None,
    seen: Sequence[str] = (),
) -> JourneyMoveDoc:
    return {
        "subject": subject,
        "subject_id": subject_id,
        "seq": seq,
        "from_phase": from_phase,
        "to_phase": to_phase,
        "reason": reason,
        "rule_id": rule_id,
        "caused_by": caused_by,
        "content": content,
        "channel": channel,
        "seen": list(seen),
        "occurred_at": occurred_at,
        "ruleset_version": ruleset_version,
    }
