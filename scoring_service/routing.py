"""Events move leads: an event's hits, the account it places the lead in, the stage the scores
reach, and the move with its records, notifications and handoff. Pure: no I/O.
"""

from __future__ import annotations

from collections.abc import Mapping
from functools import partial
from typing import Any, Final

from schemas.rule_set import DEFAULT_SCORE
from scoring_service.effects import Effects
from scoring_service.intake import Event
from scoring_service.journey import advance, follow_members
from scoring_service.lead_scores import QUEUE_PREFIX, LeadScores, higher_stage, lead_label
from scoring_service.rules import CompiledRuleSet
from scoring_service.scores import QUALIFIED_STAGES
from scoring_service.state import (
    Account,
    JourneyState,
    LeadState,
)
from stage_router import records
from stage_router.accounts import follow_lead
from stage_router.lifecycle import (
    LEAD,
    MQL,
    RANK,
    SAL,
    SQL,
    Move,
    automatic_move,
)

# Stages a lead can be recycled from (sales feedback `rejected`, or an expired SLA).
RECYCLABLE: Final = frozenset({"mql", "sal", "sql"})


def deep_merge(base: dict[str, Any], update: Mapping[str, Any]) -> dict[str, Any]:
    """Traits as Segment treats them: later values win; nested objects merge key by key."""
    merged = dict(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def allowed_rank(
    state: LeadState, rules: CompiledRuleSet, account_traits: Mapping[str, Any] | None
) -> tuple[int, str | None]:
    """The highest rank a lead's traits allow, and why not higher: an exclusion keeps it out
    of mql and beyond; each stage's requirements (cumulative) must hold to enter it."""
    for exclusion_id, excluded in rules.exclusions:
        if excluded(None, state.traits, account_traits):
            return RANK[LEAD], f"excluded: {exclusion_id}"
    for stage in (MQL, SAL, SQL):
        for what, holds in rules.requirements[stage]:
            if not holds(None, state.traits, account_traits):
                return RANK[stage] - 1, f"{stage} requires {what}"
    return RANK[SQL], None


class Router(LeadScores):
    """Applies events to leads and routes the leads that reach a stage."""

    def apply_event(
        self,
        state: LeadState,
        event: Event,
        account: Account | None,
        *,
        now: float,
        effects: Effects | None = None,
    ) -> Effects:
        """Score one event for its (already resolved) lead and route the stage; the effects
        are added to `effects` when given."""
        if effects is None:
            effects = Effects()
        self._advance_clock(state, event.ts)
        disqualify: str | None = None
        trigger: tuple[str, str] | None = None
        traits_changed = False
        if event.type == "identify" and event.traits:
            traits = deep_merge(state.traits, event.traits)
            traits_changed = traits != state.traits
            state.traits = traits
        elif event.type == "group":
            # Another account: its traits are new to this lead whatever its version says.
            traits_changed = state.account_id != event.group_id
            state.account_id = event.group_id
        account_version = account.version if account and self.rules.fit_reads_account else 0
        if traits_changed or state.fit_key != (self.rules.version, account_version):
            disqualify = self.refresh_fit(state, account)
        elif self.rules.fit_disqualifiers and state.stage != "disqualified":
            for rule_id in state.fit_rules:
                if rule_id in self.rules.fit_disqualifiers:
                    disqualify = rule_id
                    break
        trigger, behaviour_disqualify = self._score_behaviour(state, event, account, effects.hits)
        disqualify = disqualify or behaviour_disqualify
        state.ruleset_version = self.rules.version
        scorer = self.accounts
        member_of = (
            account
            if scorer is not None and account is not None and account.account_id == state.account_id
            else None
        )
        # What the account's phase is judged from, besides this member's phase: who the
        # members are and their roles. Did this event change them?
        recount = False
        if scorer is not None and member_of is not None:
            before = member_of.members.get(state.lead_id)
            count = len(member_of.members)
            # The account's score first, so the lead's records carry the one this event made.
            scorer.sync(member_of, state, self._member_named(state))
            if self.reads_account:
                state.account_coverage, state.account_score = member_of.coverage, member_of.total
            after = member_of.members.get(state.lead_id)
            recount = (
                count != len(member_of.members)
                or (before is None) != (after is None)
                or (before is not None and after is not None and before[2] != after[2])
            )
        elif self.reads_account:
            state.account_coverage = state.account_score = 0.0
        if self.journey is not None:
            # Before routing: the transition and the handoff carry the phase this event
            # placed the lead in (a demo request is evaluation).
            self._place(state, event, account, member_of, recount, effects)
        self.route(
            state,
            effects,
            disqualify=disqualify,
            trigger=trigger,
            event=event,
            account=account,
            now=now,
        )
        if scorer is not None and member_of is not None:
            earned = scorer.earned(member_of)
            if earned is not None:
                self._move_account(
                    member_of, earned, effects, caused_by=event.message_id, at=event.ts, now=now
                )
        return effects

    def _place(
        self,
        state: LeadState,
        event: Event,
        account: Account | None,
        member_of: Account | None,
        recount: bool,
        effects: Effects,
    ) -> None:
        """The event's place in the lead's buyer journey, and its account's: judged again
        whenever the member's phase, its role or the account's members changed, so where
        the account ends is a function of its members' latest state, whatever the order
        their events arrived in."""
        book = self.journey
        assert book is not None
        journey = state.journey
        if journey is None:
            journey = state.journey = JourneyState()
        advance(
            book,
            journey,
            event,
            effects.journey_moves,
            lead_id=state.lead_id,
            traits=state.traits,
            account_traits=account.traits if account else None,
            stage=state.stage,
            score=state.fit + state.engagement,
            ruleset_version=self.rules.version,
        )
        rank = book.rank(journey.phase)
        if member_of is not None and (
            recount or member_of.member_phases.get(state.lead_id, -1) != rank
        ):
            follow_members(
                book,
                member_of,
                state.lead_id,
                rank,
                effects.journey_moves,
                at=event.ts,
                caused_by=event.message_id,
                ruleset_version=self.rules.version,
            )

    def account_left(self, account: Account, event: Event, effects: Effects) -> None:
        """A member left `account` (joined another, merged into another lead): its phase
        follows the members that remain."""
        self.phase_without_member(account, effects, at=event.ts, caused_by=event.message_id)

    def phase_without_member(
        self, account: Account, effects: Effects, *, at: float, caused_by: str | None
    ) -> None:
        """The account's buyer-journey phase, judged again from the members that remain."""
        if self.journey is not None and self.accounts is not None:
            follow_members(
                self.journey,
                account,
                None,
                -1,
                effects.journey_moves,
                at=at,
                caused_by=caused_by,
                ruleset_version=self.rules.version,
            )

    def note_scores(self, state: LeadState) -> None:
        """Keep each score's total and the label on the lead (for lists), or clear them
        when the rule set has one score and no grades."""
        if not self.rules.book.listed:
            state.totals = state.label = None
            return
        entries = self.score_entries(state)
        state.totals = {name: entry["total"] for name, entry in entries.items()}
        state.label = lead_label(entries)

    def account_follows(
        self,
        state: LeadState,
        account: Account | None,
        effects: Effects,
        *,
        caused_by: str | None,
        at: float,
        now: float,
        reason: str | None = None,
    ) -> None:
        """After a lead changed outside scoring (feedback, a deadline, an admin, re-scoring):
        its account's roll-up follows, and so does its stage (a lead's opportunity or win is
        its account's too; a score that earned a stage moves it)."""
        scorer = self.accounts
        if scorer is None or account is None or account.account_id != state.account_id:
            return
        scorer.sync(account, state, self._member_named(state))
        # A member's opportunity or win first, then whatever the score has earned (judged
        # after the first: an opportunity is past anything a score earns).
        followed = follow_lead(account.stage, state.stage)
        if followed is not None:
            self._move_account(account, followed, effects, caused_by=caused_by, at=at, now=now)
        earned = scorer.earned(account, reason)
        if earned is not None:
            self._move_account(account, earned, effects, caused_by=caused_by, at=at, now=now)

    def _move_account(
        self,
        account: Account,
        move: Move,
        effects: Effects,
        *,
        caused_by: str | None,
        at: float,
        now: float,
    ) -> None:
        assert self.accounts is not None
        self.accounts.move(
            account,
            move,
            effects.account_transitions,
            effects.account_notifications,
            caused_by=caused_by,
            at=at,
            now=now,
        )

    def route(
        self,
        state: LeadState,
        effects: Effects,
        *,
        disqualify: str | None,
        trigger: tuple[str, str] | None,
        event: Event,
        account: Account | None,
        now: float,
    ) -> None:
        """Ask the stage router for a move and turn it into records."""
        trigger = higher_stage(state.pending_trigger, trigger)
        book = self.rules.book
        totals = self.totals(state) if book.several else None
        reached, qualified_by = book.reached(totals) if totals is not None else self.reached(state)
        if disqualify is None and trigger is None:
            # Only a threshold could move the lead: when none is newly crossed (the common
            # case), skip the stage router altogether.
            reachable = RANK[reached] if reached is not None else -1
            if state.stage == "disqualified" or reachable <= RANK[state.stage]:
                state.pending_trigger = None
                if totals is not None:
                    self._notify_qualified(state, totals, event, account, effects, now)
                return
        if state.allowed is None:
            state.allowed = allowed_rank(state, self.rules, account.traits if account else None)
        allowed, why = state.allowed
        decide = partial(
            automatic_move,
            stage=state.stage,
            reached=reached,
            trigger=trigger,
            disqualify_rule=disqualify,
        )
        move = decide(allowed_rank=allowed)
        # Held: the lead would go further but for its traits; the reason is shown on it.
        wanted = decide() if why is not None else move
        state.held = why if wanted is not None and wanted != move else None
        if move is not None:
            if move.reason == "trigger" and move.rule_id is not None:
                qualified_by = list(self.rules.book.scores_of(move.rule_id))
            elif move.reason != "threshold":
                qualified_by = []
            self.move(
                state,
                move,
                effects,
                caused_by=event.message_id,
                occurred_at=event.ts,
                account=account,
                now=now,
                qualified_by=qualified_by,
            )
        if totals is not None:
            self._notify_qualified(state, totals, event, account, effects, now)
        # A trigger that could not be honoured (requirements, exclusions) waits for the traits.
        if (
            trigger is not None
            and RANK.get(state.stage, -1) < RANK[trigger[0]]
            and state.stage != "disqualified"
        ):
            state.pending_trigger = trigger
        else:
            state.pending_trigger = None

    def move(
        self,
        state: LeadState,
        move: Move,
        effects: Effects,
        *,
        caused_by: str | None,
        occurred_at: float,
        account: Account | None,
        now: float,
        detail: str | None = None,
        qualified_by: list[str] | None = None,
    ) -> None:
        """Apply a stage change and emit its transition (and notification) records;
        `qualified_by` names the scores that earned it (a threshold's, a trigger's)."""
        book = self.rules.book
        if book.several and qualified_by:
            for name in qualified_by:
                state.qualified[name] = move.to_stage
        entries = self.score_entries(state)
        if book.listed:
            state.totals = {name: entry["total"] for name, entry in entries.items()}
            state.label = lead_label(entries)
        state.seq += 1
        transition = records.transition_record(
            lead_id=state.lead_id,
            seq=state.seq,
            account_id=state.account_id,
            from_stage=state.stage,
            to_stage=move.to_stage,
            reason=move.reason,
            rule_id=move.rule_id,
            score=records.score_doc(state.fit, state.engagement),
            ruleset_version=self.rules.version,
            caused_by=caused_by,
            occurred_at=occurred_at,
            emitted_at=now,
            reason_detail=detail,
            committee_role=state.committee_role if self.accounts is not None else None,
            account_score=(
                records.account_score_doc(account.fit, account.engagement, account.coverage)[
                    "total"
                ]
                if self.accounts is not None
                and account is not None
                and account.account_id == state.account_id
                else None
            ),
            scores=entries,
            qualified_by=qualified_by or [],
            label=lead_label(entries),
            journey_phase=state.journey.phase if state.journey is not None else None,
        )
        state.stage = move.to_stage
        state.stage_entered_at = occurred_at
        effects.transitions.append(transition)
        account_traits = account.traits if account else None
        queue = self.queue_for(state, account_traits, qualified_by or ())
        sla = self.rules.sla.get(move.to_stage)
        if move.to_stage in self.rules.notify_on:
            effects.notifications.append(
                records.promotion_record(
                    transition=transition,
                    signals=self.explain(state)[1],
                    profile_doc=records.profile(state.traits, account_traits),
                    owner=QUEUE_PREFIX + queue,
                    sla_seconds=sla,
                    occurred_at=occurred_at,
                    signals_by_score=self.named_explanations(state),
                )
            )
        if sla:
            effects.handoffs.append(
                records.Handoff(
                    lead_id=state.lead_id,
                    transition_id=transition["transition_id"],
                    stage=move.to_stage,
                    queue=queue,
                    entered_at=occurred_at,
                    respond_by=occurred_at + sla,
                )
            )

    def _notify_qualified(
        self,
        state: LeadState,
        totals: Mapping[str, float],
        event: Event,
        account: Account | None,
        effects: Effects,
        now: float,
    ) -> None:
        """A score that reaches, by its own threshold, a stage the lead is already in (it
        moved there by another score) is told to that score's sales: one notification
        per score and stage, no second move."""
        if state.stage not in RECYCLABLE:
            return
        current = RANK[state.stage]
        entries: dict[str, records.ScoreEntryDoc] | None = None
        for score in self.rules.book.scores:
            total = totals[score.name]
            if total < score.mql:
                continue  # the common case: not even at its lowest threshold
            for stage in QUALIFIED_STAGES:
                least = score.threshold(stage)
                if RANK[stage] > current or least is None or total < least:
                    continue
                before = state.qualified.get(score.name)
                if before is not None and RANK[before] >= RANK[stage]:
                    break
                state.qualified[score.name] = stage
                if stage in self.rules.notify_on:
                    entries = entries or self.score_entries(state)
                    account_traits = account.traits if account else None
                    default = entries[DEFAULT_SCORE]
                    effects.notifications.append(
                        records.qualified_record(
                            lead_id=state.lead_id,
                            seq=state.seq,
                            score_name=score.name,
                            stage=stage,
                            score={
                                "total": default["total"],
                                "fit": default["fit"],
                                "engagement": default["engagement"],
                            },
                            scores=entries,
                            label=lead_label(entries),
                            signals=self.explain(state)[1],
                            signals_by_score=self.named_explanations(state),
                            profile_doc=records.profile(state.traits, account_traits),
                            owner=QUEUE_PREFIX
                            + self.queue_for(state, account_traits, (score.name,)),
                            ruleset_version=self.rules.version,
                            occurred_at=event.ts,
                            committee_role=(
                                state.committee_role if self.accounts is not None else None
                            ),
                            account_score=None,
                            journey_phase=(
                                state.journey.phase if state.journey is not None else None
                            ),
                        )
                    )
                break
