"""Scoring a batch of events against a working set of leads. Pure: no I/O.

The shell loads the working set (the leads, accounts and identity links a batch touches),
calls `score_batch`, and writes back what changed. A replay or a simulation runs the same
code over an in-memory working set.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Final

from scoring_service.effects import Effects
from scoring_service.engine import Engine
from scoring_service.intake import Event
from scoring_service.routing import deep_merge
from scoring_service.state import Account, LeadState
from stage_router.records import (
    AccountNotificationDoc,
    AccountTransitionDoc,
    JourneyMoveDoc,
    NotificationDoc,
    TransitionDoc,
)

# Identity links can chain (anonymous -> user -> aliased user); following more hops than
# this means a cycle, which a bad alias could create.
MAX_LINK_HOPS: Final = 16


@dataclass(slots=True)
class Workspace:
    """The leads, accounts and links a batch reads and writes, and what it changed."""

    leads: dict[str, LeadState] = field(default_factory=dict)
    accounts: dict[str, Account] = field(default_factory=dict)
    links: dict[str, str] = field(default_factory=dict)  # merged id -> the lead it joined
    new_links: dict[str, str] = field(default_factory=dict)
    link_causes: dict[str, str] = field(default_factory=dict)  # new link -> its messageId
    changed_leads: set[str] = field(default_factory=set)
    merged_leads: set[str] = field(default_factory=set)
    changed_accounts: set[str] = field(default_factory=set)

    def canonical(self, lead_id: str) -> str:
        """The lead an id now counts for, after every merge."""
        for _ in range(MAX_LINK_HOPS):
            target = self.links.get(lead_id)
            if target is None or target == lead_id:
                return lead_id
            lead_id = target
        return lead_id

    def note_member_accounts(self) -> None:
        """Mark the accounts of the changed leads changed too: whatever a writer did to a
        member (scored, recycled, moved on), its account mirrored, so it is written back."""
        self.changed_accounts.update(
            s.account_id
            for i in self.changed_leads
            if (s := self.leads.get(i)) is not None
            and s.account_id is not None
            and s.account_id in self.accounts
        )

    def lead(self, lead_id: str) -> LeadState:
        state = self.leads.get(lead_id)
        if state is None:
            state = self.leads[lead_id] = LeadState(lead_id=lead_id)
        return state


def note_scores(ws: Workspace, engine: Engine) -> None:
    """Before the changed leads are written: each one's totals and label, for lists (once
    per lead and batch, not per event)."""
    book = engine.rules.book
    if not book.listed:
        return
    for lead_id in ws.changed_leads:
        state = ws.leads.get(lead_id)
        if state is not None:
            engine.note_scores(state)
    scorer = engine.accounts
    if scorer is not None and book.several:
        for account_id in ws.changed_accounts:
            account = ws.accounts.get(account_id)
            if account is not None:
                docs = scorer.score_docs(account)
                account.totals = {name: doc["total"] for name, doc in docs.items()}


def ids_to_load(events: Iterable[Event]) -> tuple[set[str], set[str]]:
    """(every id a batch may name a lead by, every account id it names)."""
    lead_ids: set[str] = set()
    account_ids: set[str] = set()
    for event in events:
        if event.user_id:
            lead_ids.add(event.user_id)
        if event.anonymous_id:
            lead_ids.add(event.anonymous_id)
        if event.previous_id:
            lead_ids.add(event.previous_id)
        if event.group_id:
            account_ids.add(event.group_id)
    return lead_ids, account_ids


@dataclass(slots=True)
class ScoredEvent:
    """One event's outcome, in batch order."""

    event: Event
    lead_id: str
    effects: Effects
    merged: str | None = None
    # Why the lead was held after this event (exclusion, requirement), if it was.
    held: str | None = None


def _link(
    ws: Workspace,
    engine: Engine,
    source_id: str,
    target_id: str,
    event: Event,
    now: float,
    effects: Effects,
) -> str | None:
    """Attribute `source_id` to `target_id` from now on, merging its lead in once."""
    # The first link wins: an id already attributed to a lead never moves to another.
    if source_id == target_id or source_id in ws.links:
        return None
    ws.links[source_id] = target_id
    ws.new_links[source_id] = target_id
    ws.link_causes[source_id] = event.message_id
    source = ws.leads.pop(source_id, None)
    if source is None:
        return None
    target = ws.lead(target_id)
    account = ws.accounts.get(target.account_id or source.account_id or "")
    merged = engine.merge(target, source, event=event, account=account, now=now)
    effects.extend(merged)
    if engine.accounts is not None and source.account_id:
        # The merged-away lead is no member any more; the lead it joined counts instead.
        left = ws.accounts.get(source.account_id)
        if left is not None:
            engine.accounts.drop(left, source_id)
            engine.account_left(left, event, effects)
            ws.changed_accounts.add(left.account_id)
    ws.merged_leads.add(source_id)
    ws.changed_leads.discard(source_id)
    ws.changed_leads.add(target_id)
    return source_id


def score_event(ws: Workspace, engine: Engine, event: Event, *, now: float) -> ScoredEvent:
    """Resolve the event's lead (stitching identities), apply it, and record the effects."""
    effects = Effects()
    merged: str | None = None
    if event.type == "alias":
        lead_id = ws.canonical(event.user_id)  # type: ignore[arg-type]
        merged = _link(ws, engine, event.previous_id, lead_id, event, now, effects)  # type: ignore[arg-type]
    elif event.user_id:
        lead_id = ws.canonical(event.user_id)
        if event.anonymous_id and event.anonymous_id != event.user_id:
            merged = _link(ws, engine, event.anonymous_id, lead_id, event, now, effects)
    else:
        lead_id = ws.canonical(event.anonymous_id)  # type: ignore[arg-type]
    state = ws.lead(lead_id)
    account: Account | None = None
    if event.type == "group" and event.group_id:
        if engine.accounts is not None and state.account_id not in (None, event.group_id):
            # Moving to another account: the old one loses this member's engagement.
            left = ws.accounts.get(state.account_id)
            if left is not None:
                engine.accounts.drop(left, lead_id)
                engine.account_left(left, event, effects)
                ws.changed_accounts.add(left.account_id)
        account = ws.accounts.get(event.group_id)
        if account is None:
            account = ws.accounts[event.group_id] = Account(event.group_id)
        if event.traits:
            traits = deep_merge(account.traits, event.traits)
            # Only a real change moves the version: every member's fit is refreshed on
            # their next event when it does, and most group calls repeat what is known.
            if traits != account.traits:
                account.traits = traits
                account.version += 1
                ws.changed_accounts.add(account.account_id)
    elif state.account_id:
        account = ws.accounts.get(state.account_id)
        if account is None and engine.accounts is not None:
            account = ws.accounts[state.account_id] = Account(state.account_id)
    engine.apply_event(state, event, account, now=now, effects=effects)
    # (A scored account is written back with its changed members: LeadTransaction.flush.)
    ws.changed_leads.add(lead_id)
    return ScoredEvent(event, lead_id, effects, merged, state.held)


def without_bots(engine: Engine, events: list[Event]) -> tuple[list[Event], int]:
    """The events people sent, and how many the rule set's crawler list left out."""
    if engine.rules.bot_agents is None:
        return events, 0
    kept = [event for event in events if not engine.rules.is_bot(event)]
    return kept, len(events) - len(kept)


def score_batch(
    ws: Workspace, engine: Engine, events: Iterable[Event], *, now: float
) -> list[ScoredEvent]:
    """Score events in order; the workspace records what to write back."""
    return [score_event(ws, engine, event, now=now) for event in events]


class Replay:
    """The whole pipeline in memory: dedup, identity, scoring. For checks and simulations."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.ws = Workspace()
        self.seen: set[tuple[str, str]] = set()
        self.transitions: list[TransitionDoc] = []
        self.notifications: list[NotificationDoc] = []
        self.account_transitions: list[AccountTransitionDoc] = []
        self.account_notifications: list[AccountNotificationDoc] = []
        self.journey_moves: list[JourneyMoveDoc] = []
        self.scored_for: list[str] = []  # the lead each scored event counted for, in order

    def feed(self, events: Iterable[Event], *, now: float) -> None:
        for event in events:
            key = (event.raw_id, event.message_id)
            if key in self.seen or self.engine.rules.is_bot(event):
                continue
            self.seen.add(key)
            scored = score_event(self.ws, self.engine, event, now=now)
            self.scored_for.append(scored.lead_id)
            self.transitions.extend(scored.effects.transitions)
            self.notifications.extend(scored.effects.notifications)
            self.account_transitions.extend(scored.effects.account_transitions)
            self.account_notifications.extend(scored.effects.account_notifications)
            self.journey_moves.extend(scored.effects.journey_moves)
