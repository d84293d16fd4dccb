"""Simulation and impact analysis: the engine run over events in memory. Pure: no I/O."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import orjson

from scoring_service.engine import Engine
from scoring_service.intake import Event, Rejection, parse_event
from scoring_service.lead_scores import lead_label
from scoring_service.pipeline import Replay, Workspace, score_event
from scoring_service.state import Account, JourneyState, LeadState, Member
from stage_router.lifecycle import STAGES
from stage_router.records import (
    AccountTransitionDoc,
    JourneyMoveDoc,
    NotificationDoc,
    TransitionDoc,
    score_doc,
)


class BudgetExceeded(Exception):
    """The simulation ran past the time it was given."""


def _phase(journey: JourneyState | None) -> str | None:
    return journey.phase if journey is not None else None


def _explained(engine: Engine, state: LeadState) -> dict[str, Any]:
    score, signals = engine.explain(state)
    entries = engine.score_entries(state)
    return {
        "score": score,
        "signals": signals,
        "scores": entries,
        "label": lead_label(entries),
        "signals_by_score": engine.named_explanations(state),
        "qualified": state.qualified,
    }


def simulate(
    engine: Engine,
    docs: Iterable[Any],
    *,
    now: float,
    budget_seconds: float | None = None,
) -> dict[str, Any]:
    """Score events from an empty start and say, event by event, what each rule did.

    With `budget_seconds`, raises BudgetExceeded once that much CPU time has passed (checked
    between events), so a request cannot occupy a worker for long.
    """
    deadline = None if budget_seconds is None else time.thread_time() + budget_seconds
    ws = Workspace()
    seen: set[tuple[str, str]] = set()
    trajectories: dict[str, list[dict[str, Any]]] = {}
    transitions: list[TransitionDoc] = []
    notifications: list[NotificationDoc] = []
    account_transitions: list[AccountTransitionDoc] = []
    journey_moves: list[JourneyMoveDoc] = []
    rejected: list[dict[str, Any]] = []
    duplicates: list[int] = []
    crawlers: list[int] = []
    for index, doc in enumerate(docs):
        if deadline is not None and time.thread_time() > deadline:
            raise BudgetExceeded(f"stopped at event {index} after {budget_seconds} s")
        try:
            raw = doc if isinstance(doc, bytes) else orjson.dumps(doc)
        except TypeError as exc:  # lone surrogates, nesting beyond the encoder
            rejected.append({"index": index, "error": "invalid_text", "detail": str(exc)})
            continue
        event = parse_event(raw, now=now)
        if isinstance(event, Rejection):
            rejected.append({"index": index, "error": event.code, "detail": event.detail})
            continue
        key = (event.raw_id, event.message_id)
        if key in seen:
            duplicates.append(index)
            continue
        # The crawler test the live pipeline (without_bots) and the replay apply.
        if engine.rules.is_bot(event):
            crawlers.append(index)
            continue
        seen.add(key)
        scored = score_event(ws, engine, event, now=now)
        state = ws.leads[scored.lead_id]
        trajectory = trajectories.setdefault(scored.lead_id, [])
        if scored.merged is not None:
            trajectory.extend(trajectories.pop(scored.merged, []))
        trajectory.append(
            {
                "index": index,
                "message_id": event.message_id,
                "type": event.type,
                "occurred_at": event.timestamp,
                "hits": [
                    {"rule_id": h.rule_id, "points": h.points, "counted": h.counted}
                    for h in scored.effects.hits
                ],
                "score": score_doc(state.fit, state.engagement),
                "scores": (
                    {n: e["total"] for n, e in engine.score_entries(state).items()}
                    if engine.rules.book.several
                    else {}
                ),
                "stage": state.stage,
                "journey_phase": _phase(state.journey),
                "merged": scored.merged,
                "transitions": [t["transition_id"] for t in scored.effects.transitions],
            }
        )
        transitions.extend(scored.effects.transitions)
        notifications.extend(scored.effects.notifications)
        notifications.extend(scored.effects.account_notifications)  # type: ignore[arg-type]
        account_transitions.extend(scored.effects.account_transitions)
        journey_moves.extend(scored.effects.journey_moves)
    leads = [
        {
            "lead_id": lead_id,
            "stage": ws.leads[lead_id].stage,
            "journey_phase": _phase(ws.leads[lead_id].journey),
            **_explained(engine, ws.leads[lead_id]),
            "trajectory": steps,
        }
        for lead_id, steps in trajectories.items()
    ]
    return {
        "ruleset_version": engine.rules.version,
        "leads": leads,
        "transitions": transitions,
        "notifications": notifications,
        "accounts": _accounts_explained(engine, ws),
        "account_transitions": account_transitions,
        "journey_moves": journey_moves,
        "rejected": rejected,
        "duplicates": duplicates,
        "crawlers": crawlers,
    }


def _accounts_explained(engine: Engine, ws: Workspace) -> list[dict[str, Any]]:
    """Where each account the journey touched ends, with its committee explained."""
    scorer = engine.accounts
    if scorer is None:
        return []
    result = []
    for account_id, account in sorted(ws.accounts.items()):
        score, covered, missing, members = scorer.explain(account)
        result.append(
            {
                "account_id": account_id,
                "stage": account.stage,
                "journey_phase": _phase(account.journey),
                "score": score,
                "roles_covered": covered,
                "roles_missing": missing,
                "top_members": members,
            }
        )
    return result


@dataclass(frozen=True, slots=True)
class Outcome:
    """Where a lead's history ends under one rule set."""

    stage: str
    total: float
    rule_points: dict[str, float]
    # What the lead brings its account (engagement, clock, committee role), if it has one.
    member: Member | None = None
    # Each score's total, and the stage each score qualified the lead for.
    totals: Mapping[str, float] = field(default_factory=dict)
    qualified: Mapping[str, str] = field(default_factory=dict)
    # The buyer-journey phase the history ends in (None without a journey, or in none).
    journey_phase: str | None = None


def replay_lead(
    engine: Engine, lead_id: str, history: list[Event], account: Account | None, *, now: float
) -> Outcome:
    """A lead's stored history from an empty start, under `engine`'s rule set. The account
    is read (its traits), never changed: the replay scores a scratch copy."""
    state = LeadState(lead_id=lead_id, account_id=account.account_id if account else None)
    scratch = Account(account.account_id, account.traits, account.version) if account else None
    for event in history:
        engine.apply_event(state, event, scratch, now=now)
    _, signals = engine.explain(state)
    member = (
        (state.engagement, state.as_of, state.committee_role)
        if scratch is not None and state.account_id == scratch.account_id and state.as_of
        else None
    )
    return Outcome(
        state.stage,
        state.total,
        {s["rule_id"]: s["contribution"] for s in signals},
        member,
        {name: entry["total"] for name, entry in engine.score_entries(state).items()},
        dict(state.qualified),
        _phase(state.journey),
    )


def account_stage_earned(engine: Engine, account: Account) -> str:
    """The stage scoring alone gives an account with these members: target, engaged or mqa."""
    scorer = engine.accounts
    if scorer is None:
        return "target"
    scorer.score(account)
    move = scorer.earned(account)
    return move.to_stage if move is not None else "target"


@dataclass
class ImpactReport:
    """Side-by-side outcomes of the active and a candidate rule set over stored history.

    Only counts and a bounded list of example leads are kept, so memory does not grow with
    the number of leads replayed.
    """

    active_version: int
    candidate_version: int
    max_examples: int = 100
    leads: int = 0
    moved: int = 0
    stages_active: Counter[str] = field(default_factory=Counter)
    stages_candidate: Counter[str] = field(default_factory=Counter)
    phases_active: Counter[str] = field(default_factory=Counter)
    phases_candidate: Counter[str] = field(default_factory=Counter)
    examples: list[dict[str, Any]] = field(default_factory=list)
    rule_points: dict[str, list[float]] = field(default_factory=dict)
    rule_leads: Counter[str] = field(default_factory=Counter)
    # Per account: (traits, version) and its members' outcome under each version. Grows with
    # the accounts' members (three numbers each), not with their events.
    accounts: dict[str, tuple[dict[str, Any], int]] = field(default_factory=dict)
    members_active: dict[str, dict[str, Member]] = field(default_factory=dict)
    members_candidate: dict[str, dict[str, Member]] = field(default_factory=dict)
    account_summary: dict[str, Any] | None = None
    # Per score: [sum of totals, leads] under each version, and leads it qualified (mql+).
    score_sums: dict[str, list[float]] = field(default_factory=dict)
    score_qualified: dict[str, Counter[str]] = field(default_factory=dict)

    def add(
        self, lead_id: str, active: Outcome, candidate: Outcome, account: Account | None = None
    ) -> None:
        self.leads += 1
        if account is not None:
            self.accounts.setdefault(account.account_id, (account.traits, account.version))
            if active.member is not None:
                self.members_active.setdefault(account.account_id, {})[lead_id] = active.member
            if candidate.member is not None:
                self.members_candidate.setdefault(account.account_id, {})[lead_id] = (
                    candidate.member
                )
        self.stages_active[active.stage] += 1
        self.stages_candidate[candidate.stage] += 1
        if active.journey_phase is not None:
            self.phases_active[active.journey_phase] += 1
        if candidate.journey_phase is not None:
            self.phases_candidate[candidate.journey_phase] += 1
        for side, outcome in ((0, active), (2, candidate)):
            for name, total in outcome.totals.items():
                sums = self.score_sums.setdefault(name, [0.0, 0.0, 0.0, 0.0])
                sums[side] += total
                sums[side + 1] += 1
            for name in outcome.qualified:
                self.score_qualified.setdefault(name, Counter())[
                    "active" if side == 0 else "candidate"
                ] += 1
        differences: dict[str, float] = {}
        for rule_id in active.rule_points.keys() | candidate.rule_points.keys():
            before = active.rule_points.get(rule_id, 0.0)
            after = candidate.rule_points.get(rule_id, 0.0)
            totals = self.rule_points.setdefault(rule_id, [0.0, 0.0])
            totals[0] += before
            totals[1] += after
            if abs(after - before) > 1e-9:
                differences[rule_id] = after - before
                self.rule_leads[rule_id] += 1
        if active.stage != candidate.stage:
            self.moved += 1
            if len(self.examples) < self.max_examples:
                self.examples.append(
                    {
                        "lead_id": lead_id,
                        "active": {"stage": active.stage, "total": round(active.total, 2)},
                        "candidate": {"stage": candidate.stage, "total": round(candidate.total, 2)},
                        "rules": [
                            {"rule_id": rule_id, "points_difference": round(diff, 2)}
                            for rule_id, diff in sorted(
                                differences.items(), key=lambda item: -abs(item[1])
                            )[:5]
                        ],
                    }
                )

    def judge_accounts(self, active: Engine, candidate: Engine) -> None:
        """Each account's stage under both versions, from its members' replayed outcomes:
        how many accounts would reach mqa under the candidate."""
        stages: dict[str, Counter[str]] = {"active": Counter(), "candidate": Counter()}
        moved: list[dict[str, Any]] = []
        for account_id, (traits, version) in sorted(self.accounts.items()):
            earned = {}
            for name, engine, members in (
                ("active", active, self.members_active),
                ("candidate", candidate, self.members_candidate),
            ):
                account = Account(account_id, traits, version)
                account.members = dict(members.get(account_id, {}))
                account.as_of = max((m[1] for m in account.members.values()), default=None)
                earned[name] = (account_stage_earned(engine, account), round(account.total, 2))
                stages[name][earned[name][0]] += 1
            if earned["active"][0] != earned["candidate"][0] and len(moved) < self.max_examples:
                moved.append(
                    {
                        "account_id": account_id,
                        "active": {"stage": earned["active"][0], "total": earned["active"][1]},
                        "candidate": {
                            "stage": earned["candidate"][0],
                            "total": earned["candidate"][1],
                        },
                    }
                )
        self.account_summary = {
            "accounts": len(self.accounts),
            "stages": {
                stage: {"active": stages["active"][stage], "candidate": stages["candidate"][stage]}
                for stage in ("target", "engaged", "mqa")
            },
            "moved_examples": moved,
        }

    def to_dict(self) -> dict[str, Any]:
        rules: list[dict[str, Any]] = [
            {
                "rule_id": rule_id,
                "points_active": round(before, 2),
                "points_candidate": round(after, 2),
                "difference": round(after - before, 2),
                "leads_affected": self.rule_leads[rule_id],
            }
            for rule_id, (before, after) in self.rule_points.items()
            if self.rule_leads[rule_id]
        ]
        rules.sort(key=lambda r: (-abs(r["difference"]), r["rule_id"]))
        return {
            "active_version": self.active_version,
            "candidate_version": self.candidate_version,
            "leads": self.leads,
            "stages": {
                stage: {
                    "active": self.stages_active[stage],
                    "candidate": self.stages_candidate[stage],
                }
                for stage in STAGES
            },
            "moved": self.moved,
            "moved_examples": self.examples,
            # Leads per buyer-journey phase at the end of their history, either version's
            # phases (leads in none are not counted).
            "journey": {
                phase: {
                    "active": self.phases_active[phase],
                    "candidate": self.phases_candidate[phase],
                }
                for phase in sorted(self.phases_active.keys() | self.phases_candidate.keys())
            },
            "rules": rules,
            "accounts": self.account_summary,
            # Per score (either version's): the mean total and the leads it qualified.
            "scores": {
                name: {
                    "mean_active": round(sums[0] / sums[1], 2) if sums[1] else None,
                    "mean_candidate": round(sums[2] / sums[3], 2) if sums[3] else None,
                    "qualified_active": self.score_qualified.get(name, Counter())["active"],
                    "qualified_candidate": self.score_qualified.get(name, Counter())["candidate"],
                }
                for name, sums in sorted(self.score_sums.items())
            },
        }


def replay_documents(engine: Engine, docs: Iterable[Any], *, now: float) -> Replay:
    """Raw messages through the whole pipeline in memory (invalid ones skipped, as the DLQ
    would take them): what the service must end up with."""
    result = Replay(engine)
    for doc in docs:
        event = parse_event(doc if isinstance(doc, bytes) else orjson.dumps(doc), now=now)
        if isinstance(event, Event):
            result.feed([event], now=now)
    return result


def _smoke_events(now: float) -> list[dict[str, Any]]:
    """An ordinary visitor's first hour: pages, identified with typical traits, grouped into
    a company, a hand-raise. Every rule set must be able to score these."""

    def at(minutes: int) -> str:
        return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now - 3600 + minutes * 60))

    company = {"name": "Check Co", "industry": "Software", "employees": 120, "country": "US"}
    return [
        {
            "type": "page",
            "messageId": "check-1",
            "anonymousId": "check-a",
            "timestamp": at(0),
            "properties": {"path": "/pricing", "url": "https://example.com/pricing"},
            "context": {"campaign": {"source": "google", "medium": "cpc"}},
        },
        {
            "type": "identify",
            "messageId": "check-2",
            "userId": "check-u",
            "anonymousId": "check-a",
            "timestamp": at(1),
            "traits": {"email": "check@example.com", "title": "VP Operations", "company": company},
        },
        {
            "type": "group",
            "messageId": "check-3",
            "userId": "check-u",
            "groupId": "check-g",
            "timestamp": at(2),
            "traits": company,
        },
        {
            "type": "track",
            "messageId": "check-4",
            "userId": "check-u",
            "timestamp": at(3),
            "event": "Demo Requested",
            "properties": {"form": "check"},
        },
        {
            "type": "page",
            "messageId": "check-5",
            "userId": "check-u",
            "timestamp": at(4),
            "properties": {"path": "/careers"},
        },
    ]


def check_runs(engine: Engine, *, now: float) -> None:
    """Score an ordinary visitor's events in memory and explain the result: raises whatever
    the engine raises, so that a version that cannot score is found before it is live (at
    activation) and said so plainly (when the live one is loaded)."""
    replay = replay_documents(engine, _smoke_events(now), now=now)
    for state in replay.ws.leads.values():
        engine.explain(state)
        engine.totals(state)
