"""The transition and notification records (README: Topics), as plain dicts. Pure."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from scoring_service.timefmt import iso
from stage_router.lifecycle import RANK, SAL

TOP_SIGNALS = 5


@dataclass(frozen=True, slots=True)
class Handoff:
    """A stage entered with a follow-up SLA: sales must respond by `respond_by`."""

    lead_id: str
    transition_id: str
    stage: str
    queue: str
    entered_at: float
    respond_by: float


def score_doc(fit: float, engagement: float) -> dict[str, float]:
    """Scores as published: two decimals, so float noise never reaches a CRM."""
    fit_r, eng_r = round(fit, 2), round(engagement, 2)
    return {"total": round(fit_r + eng_r, 2), "fit": fit_r, "engagement": eng_r}


def transition_record(
    *,
    lead_id: str,
    seq: int,
    account_id: str | None,
    from_stage: str,
    to_stage: str,
    reason: str,
    rule_id: str | None,
    score: dict[str, float],
    ruleset_version: int,
    caused_by: str | None,
    occurred_at: float,
    emitted_at: float,
) -> dict[str, Any]:
    return {
        "transition_id": f"{lead_id}:{seq}",
        "lead_id": lead_id,
        "account_id": account_id,
        "from_stage": from_stage,
        "to_stage": to_stage,
        "reason": reason,
        "rule_id": rule_id,
        "score": score,
        "ruleset_version": ruleset_version,
        "caused_by": caused_by,
        "occurred_at": iso(occurred_at),
        "emitted_at": iso(emitted_at),
    }


def top_signals(
    signals: Iterable[tuple[str, str, float, int, float | None]], limit: int = TOP_SIGNALS
) -> list[dict[str, Any]]:
    """The signals that explain a score most: (rule_id, description, points, count, last_seen),
    largest absolute contribution first."""
    ranked = sorted(signals, key=lambda s: (-abs(s[2]), s[0]))[:limit]
    return [
        {
            "rule_id": rule_id,
            "description": description,
            "points": round(points, 2),
            "count": count,
            "last_seen": iso(last_seen) if last_seen is not None else None,
        }
        for rule_id, description, points, count, last_seen in ranked
    ]


def profile(traits: Mapping[str, Any], account_traits: Mapping[str, Any] | None) -> dict[str, Any]:
    company = traits.get("company")
    company_name = company.get("name") if isinstance(company, dict) else company
    if not company_name and account_traits:
        company_name = account_traits.get("name")
    return {
        "email": traits.get("email"),
        "title": traits.get("title"),
        "company": company_name if isinstance(company_name, str) else None,
    }


def breach_record(
    *,
    handoff_transition_id: str,
    lead_id: str,
    stage: str,
    score: dict[str, float],
    signals: list[dict[str, Any]],
    profile_doc: dict[str, Any],
    owner: str,
    respond_by: float,
    ruleset_version: int,
) -> dict[str, Any]:
    """The notification that a handoff's follow-up deadline passed unanswered."""
    return {
        "notification_id": f"{handoff_transition_id}:sla_breach",
        "type": "sla_breach",
        "lead_id": lead_id,
        "stage": stage,
        "priority": "hot",
        "score": score,
        "top_signals": signals,
        "profile": profile_doc,
        "owner": owner,
        "respond_by": iso(respond_by),
        "ruleset_version": ruleset_version,
        "occurred_at": iso(respond_by),
    }


def promotion_record(
    *,
    transition: Mapping[str, Any],
    signals: list[dict[str, Any]],
    profile_doc: dict[str, Any],
    owner: str,
    sla_seconds: float | None,
    occurred_at: float,
) -> dict[str, Any]:
    """The sales notification for entering a stage listed in `notify_on`."""
    stage = transition["to_stage"]
    return {
        "notification_id": f"{transition['transition_id']}:promotion",
        "type": "promotion",
        "lead_id": transition["lead_id"],
        "stage": stage,
        "priority": "hot" if RANK.get(stage, 0) >= RANK[SAL] else "warm",
        "score": transition["score"],
        "top_signals": signals,
        "profile": profile_doc,
        "owner": owner,
        "respond_by": iso(occurred_at + sla_seconds) if sla_seconds else None,
        "ruleset_version": transition["ruleset_version"],
        "occurred_at": iso(occurred_at),
    }
