"""The rules engine: (lead state, event, rule set) -> (new state, effects). Pure: no I/O.

The state is updated in place: the batch that loaded it owns it, and copying every lead on
every event would cost more than the scoring itself. Callers that need the old state (a
simulation, say) copy it first.
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right, insort
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any

from schemas.ruleset import DEFAULT_SCORE
from schemas.timefmt import iso
from scoring_service.accounts import AccountScorer
from scoring_service.intake import Event
from scoring_service.journey import JourneyBook, advance, compile_journey, follow_members
from scoring_service.journey import merge as merge_journeys
from scoring_service.rules import NAME_ONLY, PATH_ONLY, CompiledRule, CompiledRuleSet
from scoring_service.scores import ADJUSTMENT_PREFIX, QUALIFIED_STAGES
from scoring_service.state import (
    AS_OF,
    HITS,
    IGNORED,
    LAST_SEEN,
    VALUE,
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
    RECYCLED,
    SAL,
    SQL,
    IllegalMove,
    Move,
    automatic_move,
    feedback_move,
    furthest_stage,
    threshold_stage,
)

# Stages a lead can be recycled from (sales feedback `rejected`, or an expired SLA).
RECYCLABLE = frozenset({"mql", "sal", "sql"})


@dataclass(frozen=True, slots=True)
class Hit:
    """A rule that matched an event; `counted` is False when its limit ignored it."""

    rule_id: str
    points: float
    counted: bool


class Effects:
    """What scoring one event (or a merge) asks the outside world to do.

    A plain class rather than a dataclass: one is made per event, and default factories
    cost more than the scoring of a typical page view.
    """

    __slots__ = (
        "account_notifications",
        "account_transitions",
        "handoffs",
        "hits",
        "journey_moves",
        "notifications",
        "transitions",
    )

    def __init__(self) -> None:
        self.hits: list[Hit] = []
        self.transitions: list[records.TransitionDoc] = []
        self.notifications: list[records.NotificationDoc] = []
        self.handoffs: list[records.Handoff] = []
        self.account_transitions: list[records.AccountTransitionDoc] = []
        self.account_notifications: list[records.AccountNotificationDoc] = []
        self.journey_moves: list[records.JourneyMoveDoc] = []

    def extend(self, other: Effects) -> None:
        self.transitions.extend(other.transitions)
        self.notifications.extend(other.notifications)
        self.handoffs.extend(other.handoffs)
        self.account_transitions.extend(other.account_transitions)
        self.account_notifications.extend(other.account_notifications)
        self.journey_moves.extend(other.journey_moves)


def deep_merge(base: dict[str, Any], update: Mapping[str, Any]) -> dict[str, Any]:
    """Traits as Segment treats them: later values win; nested objects merge key by key."""
    merged = dict(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def within_limit(counted: list[float], ts: float, count: int, window: float) -> bool:
    """May a hit at `ts` count, given the counted hits so far (sorted)?

    Not when some `window`-long span [s, s + window) would then hold more than `count` hits,
    that is when `count` counted hits and `ts` all lie less than `window` apart. For events in
    time order this is "fewer than `count` hits in the last window"; a late event also
    respects the hits already counted after it.
    """
    lo = bisect_right(counted, ts - window)
    hi = bisect_left(counted, ts + window)
    if hi - lo < count:
        return True
    # The tightest groups of `count` hits are runs of neighbours in time order.
    for first in range(lo, hi - count + 1):
        earliest = min(counted[first], ts)
        latest = max(counted[first + count - 1], ts)
        if latest - earliest < window:
            return False
    return True


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


def _strongest(a: tuple[str, str] | None, b: tuple[str, str] | None) -> tuple[str, str] | None:
    if a is None:
        return b
    if b is None:
        return a
    return b if RANK[b[0]] > RANK[a[0]] else a


QUEUE_PREFIX = records.QUEUE_PREFIX


def lead_label(entries: Mapping[str, records.ScoreEntryDoc]) -> str | None:
    """The lead's label: the default score's, else the first named score's that has one."""
    for entry in entries.values():
        if entry["label"] is not None:
            return entry["label"]
    return None


class Engine:
    """Scores events for one active rule set."""

    def __init__(self, rules: CompiledRuleSet) -> None:
        self.rules = rules
        self.accounts = AccountScorer(rules, rules.accounts) if rules.accounts else None
        # The fit rules that hold for a lead nobody knows anything about yet (`not` rules
        # may): the same for every new anonymous visitor, so judged once.
        self._unknown_fit = self._matching_fit_rules({}, None)
        self.journey: JourneyBook | None = (
            compile_journey(rules.journey) if rules.journey is not None else None
        )

    # -- scores --------------------------------------------------------------------------

    def _matching_fit_rules(
        self, traits: Mapping[str, Any], account_traits: Mapping[str, Any] | None
    ) -> tuple[CompiledRule, ...]:
        return tuple(r for r in self.rules.fit_rules if r.fit_holds(traits, account_traits))

    def refresh_fit(self, state: LeadState, account: Account | None) -> str | None:
        """Recompute fit from current traits; returns a matching disqualifier's id, if any."""
        if not state.traits and account is None:
            holding = self._unknown_fit
        else:
            holding = self._matching_fit_rules(state.traits, account.traits if account else None)
        fit = 0.0
        matched: list[str] = []
        disqualify: str | None = None
        fit_by: dict[str, float] | None = {} if self.rules.book.several else None
        for rule in holding:
            if rule.for_default:
                fit += rule.points
            if fit_by is not None:
                for name in rule.named:
                    fit_by[name] = fit_by.get(name, 0.0) + rule.points
            matched.append(rule.id)
            if rule.disqualify and disqualify is None:
                disqualify = rule.id
            if rule.promote_to:
                state.pending_trigger = _strongest(
                    state.pending_trigger, (rule.promote_to, rule.id)
                )
        if state.fit_key is None or state.fit_key[0] != self.rules.version:
            # Another rule set: which score each signal counts for may have changed.
            state.engagement_by = None
        state.fit = fit
        state.fit_by = fit_by
        state.fit_rules = matched
        if self.accounts is not None:
            state.committee_role = self.accounts.role_of(
                state.traits, account.traits if account else None
            )
        state.allowed = None  # the same traits decide it: judged again when next needed
        state.fit_key = (
            self.rules.version,
            account.version if account and self.rules.fit_reads_account else 0,
        )
        return disqualify

    def _advance_clock(self, state: LeadState, ts: float) -> None:
        if state.as_of is None:
            state.as_of = ts
        elif ts > state.as_of:
            factor = self.rules.decay_factor(ts - state.as_of)
            state.engagement *= factor
            named = state.engagement_by
            if named and factor != 1.0:
                for name in named:
                    named[name] *= factor
            state.as_of = ts

    def _count_hit(self, state: LeadState, rule: CompiledRule, ts: float) -> bool:
        signal = state.signals.get(rule.id)
        if rule.limit_count:
            counted = state.counted.setdefault(rule.id, [])
            if not within_limit(counted, ts, rule.limit_count, rule.limit_window):
                if signal is None:
                    state.signals[rule.id] = [0.0, ts, 0, 1, ts]
                else:
                    signal[IGNORED] += 1
                    if ts > signal[LAST_SEEN]:
                        signal[LAST_SEEN] = ts
                return False
            insort(counted, ts)
            # Keep two windows: enough to judge any event up to one window late.
            horizon = (state.as_of or ts) - 2 * rule.limit_window
            if counted[0] <= horizon:
                del counted[: bisect_right(counted, horizon)]
        clock: float = state.as_of  # type: ignore[assignment]
        # Most events are the lead's latest: no decay to compute.
        gain = rule.points if ts == clock else rule.points * self.rules.decay_factor(clock - ts)
        if rule.for_default:
            state.engagement += gain
        named = state.engagement_by
        if named is not None:
            for name in rule.named:
                named[name] = named.get(name, 0.0) + gain
        if signal is None:
            state.signals[rule.id] = [gain, clock, 1, 0, ts]
        else:
            if signal[AS_OF] != clock:
                signal[VALUE] *= self.rules.decay_factor(clock - signal[AS_OF])
                signal[AS_OF] = clock
            signal[VALUE] += gain
            signal[HITS] += 1
            if ts > signal[LAST_SEEN]:
                signal[LAST_SEEN] = ts
        return True

    def _score_behaviour(
        self, state: LeadState, event: Event, account: Account | None, hits: list[Hit]
    ) -> tuple[tuple[str, str] | None, str | None]:
        """Count the behavioural rules an event matches; returns (trigger, disqualifier)."""
        trigger: tuple[str, str] | None = None
        disqualify: str | None = None
        account_traits = account.traits if account else None
        path = event.path
        for rule in self.rules.candidates(event.type, event.event_name):
            # Most rules test one thing; the index already checked a name-only rule.
            shape = rule.shape
            if shape == PATH_ONLY:
                if path is None or not rule.path_matches(path):  # type: ignore[misc]
                    continue
            elif shape != NAME_ONLY and not rule.matches_behaviour(
                event, state.traits, account_traits
            ):
                continue
            counted = self._count_hit(state, rule, event.ts)
            hits.append(Hit(rule.id, rule.points if counted else 0.0, counted))
            if counted:
                if rule.promote_to:
                    trigger = _strongest(trigger, (rule.promote_to, rule.id))
                if rule.disqualify and disqualify is None:
                    disqualify = rule.id
        return trigger, disqualify

    def rescore(
        self,
        state: LeadState,
        history: list[Event],
        account: Account | None,
        *,
        now: float,
        hits_by_event: list[list[Hit]] | None = None,
    ) -> Effects:
        """Recompute fit and engagement under this rule set from the lead's stored history.

        The stage only moves forward, by threshold, with reason `rescore`: the transitions
        the lead already made stand, and a trigger that did not fire then does not fire now.
        Each event's hits under this rule set are appended to `hits_by_event` when given.
        """
        effects = Effects()
        fresh = LeadState(lead_id=state.lead_id, traits=state.traits, account_id=state.account_id)
        # An admin's adjustments stand: kept as the points they added, as of when they did.
        adjustments = {
            signal_id: list(signal)
            for signal_id, signal in state.signals.items()
            if signal_id.startswith(ADJUSTMENT_PREFIX)
        }
        for event in history:
            self._advance_clock(fresh, event.ts)
            hits: list[Hit] = []
            self._score_behaviour(fresh, event, account, hits)
            effects.hits.extend(hits)
            if hits_by_event is not None:
                hits_by_event.append(hits)
        for signal_id, signal in sorted(adjustments.items(), key=lambda item: item[1][AS_OF]):
            self._advance_clock(fresh, signal[AS_OF])
            self._add_adjustment(fresh, signal_id, signal)
        self.refresh_fit(fresh, account)
        state.fit, state.fit_rules, state.fit_key = fresh.fit, fresh.fit_rules, fresh.fit_key
        state.committee_role = fresh.committee_role
        state.engagement, state.as_of = fresh.engagement, fresh.as_of
        state.counted, state.signals = fresh.counted, fresh.signals
        state.fit_by, state.engagement_by = fresh.fit_by, None  # derived when next read
        state.allowed = None  # judged again under this rule set
        state.ruleset_version = self.rules.version
        reached, qualified_by = self.reached(state)
        move = automatic_move(
            stage=state.stage,
            reached=reached,
            allowed_rank=allowed_rank(state, self.rules, account.traits if account else None)[0],
            trigger=None,
            disqualify_rule=None,
        )
        if move is not None:
            self.move(
                state,
                Move(move.to_stage, "rescore"),
                effects,
                caused_by=None,
                occurred_at=now,
                account=account,
                now=now,
                qualified_by=qualified_by,
            )
        self.account_follows(
            state, account, effects, caused_by=None, at=now, now=now, reason="rescore"
        )
        self.note_scores(state)
        return effects

    # -- events --------------------------------------------------------------------------

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
            after = member_of.members.get(state.lead_id)
            recount = (
                count != len(member_of.members)
                or (before is None) != (after is None)
                or (before is not None and after is not None and before[2] != after[2])
            )
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
        if self.journey is not None and self.accounts is not None:
            follow_members(
                self.journey,
                account,
                None,
                -1,
                effects.journey_moves,
                at=event.ts,
                caused_by=event.message_id,
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
        trigger = _strongest(state.pending_trigger, trigger)
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

    # -- the sales handoff -----------------------------------------------------------------

    def apply_feedback(
        self,
        state: LeadState,
        *,
        outcome: str,
        reason: str | None,
        feedback_id: str,
        at: float,
        account: Account | None,
        now: float,
    ) -> Effects:
        """A sales outcome: the move the transition table allows, or IllegalFeedback."""
        move = feedback_move(state.stage, outcome, reason)
        if move.to_stage == RECYCLED:
            self._recycle(state)
        effects = Effects()
        self.move(
            state,
            move,
            effects,
            caused_by=feedback_id,
            occurred_at=at,
            account=account,
            now=now,
            detail=reason,
        )
        self.account_follows(state, account, effects, caused_by=feedback_id, at=at, now=now)
        return effects

    def manual_move(
        self,
        state: LeadState,
        *,
        to_stage: str,
        reason: str,
        caused_by: str,
        at: float,
        account: Account | None,
        now: float,
    ) -> Effects:
        """An admin sets the stage by hand (reason `manual`): any stage but the current one.
        Recycling by hand resets engagement, as a sales rejection does."""
        if to_stage == state.stage:
            raise IllegalMove(f"the lead is already in {to_stage}")
        if to_stage == RECYCLED:
            self._recycle(state)
        effects = Effects()
        self.move(
            state,
            Move(to_stage, "manual"),
            effects,
            caused_by=caused_by,
            occurred_at=at,
            account=account,
            now=now,
            detail=reason,
        )
        self.account_follows(state, account, effects, caused_by=caused_by, at=at, now=now)
        return effects

    def expire(
        self, state: LeadState, *, stage: str, at: float, account: Account | None, now: float
    ) -> Effects:
        """A follow-up deadline passed: recycle the lead when the rule set says so and it is
        still waiting in the stage it was handed over in."""
        effects = Effects()
        if self.rules.recycle_on_expiry and state.stage == stage and stage in RECYCLABLE:
            self._recycle(state)
            self.move(
                state,
                Move(RECYCLED, "sla_expired"),
                effects,
                caused_by=None,
                occurred_at=at,
                account=account,
                now=now,
            )
            self.account_follows(state, account, effects, caused_by=None, at=at, now=now)
        return effects

    def _recycle(self, state: LeadState) -> None:
        """Back to nurture: engagement starts again from 0 (limits keep their history)."""
        state.engagement = 0.0
        state.signals = {}
        state.pending_trigger = None
        state.qualified = {}
        state.engagement_by = None  # derived again: from no signals, zero

    def explain(
        self, state: LeadState, at: float | None = None, score: str = DEFAULT_SCORE
    ) -> tuple[records.ScoreDoc, list[records.SignalDoc]]:
        """A score of the lead (the default one unless named) as of `at` (by default its
        clock, the latest event time) and every signal's contribution to it; the
        contributions add up to the total."""
        clock = state.as_of
        later = 1.0 if at is None or clock is None else self.rules.decay_factor(at - clock)
        signals: list[records.SignalDoc] = []
        book = self.rules.book
        several = book.several
        engagement = 0.0
        for rule_id, (value, as_of, hits, ignored, last_seen) in state.signals.items():
            if several and score not in book.scores_of(rule_id):
                continue
            rule = self.rules.by_id.get(rule_id)
            decay = self.rules.decay_factor((clock or as_of) - as_of) * later
            engagement += value * decay
            signals.append(
                {
                    "rule_id": rule_id,
                    "description": rule.description if rule else rule_id,
                    "category": "engagement",
                    "points": rule.points if rule else None,
                    "hits": int(hits),
                    "ignored": int(ignored),
                    "contribution": value * decay,
                    "last_seen": iso(last_seen),
                }
            )
        fit = 0.0
        for rule_id in state.fit_rules:
            rule = self.rules.by_id.get(rule_id)
            if rule is not None and (not several or score in book.scores_of(rule_id)):
                fit += rule.points
                signals.append(
                    {
                        "rule_id": rule_id,
                        "description": rule.description,
                        "category": "fit",
                        "points": rule.points,
                        "hits": 1,
                        "ignored": 0,
                        "contribution": rule.points,
                        "last_seen": None,
                    }
                )
        # The running sums, exactly as every record of the score shows them: the signals
        # are apportioned to them.
        if score == DEFAULT_SCORE:
            fit, engagement = state.fit, state.engagement * later
        elif several:
            fit_by, engagement_by = self._named_sums(state)
            fit, engagement = fit_by.get(score, 0.0), engagement_by.get(score, 0.0) * later
        return records.explanation(signals, fit, engagement)

    def named_explanations(
        self, state: LeadState, at: float | None = None
    ) -> dict[str, list[records.SignalDoc]]:
        """The named scores' signals (empty when the rule set has only the default)."""
        return {
            score.name: self.explain(state, at, score.name)[1]
            for score in self.rules.book.scores[1:]
        }

    # -- several scores ------------------------------------------------------------------

    def _member_named(self, state: LeadState) -> dict[str, float] | None:
        """What a member brings its account's named scores (None with one score)."""
        return self._named_sums(state)[1] if self.rules.book.several else None

    def _named_sums(self, state: LeadState) -> tuple[dict[str, float], dict[str, float]]:
        """The named scores' fit and engagement as of the lead's clock, derived from its fit
        rules and signals when not kept yet (then kept up as hits come)."""
        book = self.rules.book
        if state.fit_by is None:
            fit_by: dict[str, float] = {}
            for rule_id in state.fit_rules:
                rule = self.rules.by_id.get(rule_id)
                if rule is not None:
                    for name in rule.named:
                        fit_by[name] = fit_by.get(name, 0.0) + rule.points
            state.fit_by = fit_by
        if state.engagement_by is None:
            engagement_by: dict[str, float] = {}
            clock = state.as_of
            for signal_id, signal in state.signals.items():
                value = signal[VALUE]
                if clock is not None and signal[AS_OF] != clock:
                    value *= self.rules.decay_factor(clock - signal[AS_OF])
                for name in book.scores_of(signal_id):
                    if name != DEFAULT_SCORE:
                        engagement_by[name] = engagement_by.get(name, 0.0) + value
            state.engagement_by = engagement_by
        return state.fit_by, state.engagement_by

    def score_parts(
        self, state: LeadState, at: float | None = None
    ) -> dict[str, tuple[float, float]]:
        """Each score's (fit, engagement) as of `at` (by default the lead's clock): running
        sums, the default score's on the lead, the named ones' in `fit_by` /
        `engagement_by`."""
        clock = state.as_of
        later = 1.0 if at is None or clock is None else self.rules.decay_factor(at - clock)
        parts = {DEFAULT_SCORE: (state.fit, state.engagement * later)}
        book = self.rules.book
        if book.several:
            fit_by, engagement_by = self._named_sums(state)
            for score in book.scores[1:]:
                name = score.name
                parts[name] = (fit_by.get(name, 0.0), engagement_by.get(name, 0.0) * later)
        return parts

    def reached(self, state: LeadState) -> tuple[str | None, list[str]]:
        """The highest stage the lead's scores qualify it for, and the scores that did."""
        book = self.rules.book
        if not book.several:
            reached = threshold_stage(
                state.total,
                self.rules.mql_threshold,
                self.rules.sal_threshold,
                self.rules.sql_threshold,
            )
            return reached, [DEFAULT_SCORE] if reached is not None else []
        return book.reached(self.totals(state))

    def totals(self, state: LeadState) -> dict[str, float]:
        """Each score's total as of the lead's clock (the default one alone with one)."""
        totals = {DEFAULT_SCORE: state.fit + state.engagement}
        book = self.rules.book
        if book.several:
            fit_by, engagement_by = self._named_sums(state)
            for score in book.scores[1:]:
                name = score.name
                totals[name] = fit_by.get(name, 0.0) + engagement_by.get(name, 0.0)
        return totals

    def score_entries(
        self, state: LeadState, at: float | None = None
    ) -> dict[str, records.ScoreEntryDoc]:
        """Every score as published (as of `at`, by default the lead's clock), with its
        grade label."""
        entries: dict[str, records.ScoreEntryDoc] = {}
        parts = self.score_parts(state, at)
        for score in self.rules.book.scores:
            f, e = parts[score.name]
            doc = records.score_doc(f, e)
            entries[score.name] = {
                "total": doc["total"],
                "fit": doc["fit"],
                "engagement": doc["engagement"],
                "label": score.label(doc["fit"], doc["engagement"]),
            }
        return entries

    def queue_for(
        self,
        state: LeadState,
        account_traits: Mapping[str, Any] | None,
        qualified_by: Sequence[str] = (),
    ) -> str:
        """The first qualifying score's own queue, else the routing rules' pick."""
        for name in qualified_by:
            score = self.rules.book.by_name.get(name)
            if score is not None and score.queue is not None:
                return score.queue
        return self.rules.queue_for(state.traits, account_traits)

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

    # -- adjustments ---------------------------------------------------------------------

    def _add_adjustment(self, state: LeadState, signal_id: str, signal: list[float]) -> None:
        """Count an adjustment signal (points as of its moment) into the lead."""
        clock = state.as_of if state.as_of is not None else signal[AS_OF]
        value = signal[VALUE] * self.rules.decay_factor(clock - signal[AS_OF])
        existing = state.signals.get(signal_id)
        if existing is None:
            state.signals[signal_id] = [value, clock, signal[HITS], 0, signal[LAST_SEEN]]
        else:
            existing[VALUE] = (
                existing[VALUE] * self.rules.decay_factor(clock - existing[AS_OF]) + value
            )
            existing[AS_OF] = clock
            existing[HITS] += signal[HITS]
            existing[LAST_SEEN] = max(existing[LAST_SEEN], signal[LAST_SEEN])
        name = signal_id[len(ADJUSTMENT_PREFIX) :]
        if name == DEFAULT_SCORE:
            state.engagement += value
        elif state.engagement_by is not None:
            state.engagement_by[name] = state.engagement_by.get(name, 0.0) + value

    def adjust(
        self,
        state: LeadState,
        *,
        scores: Sequence[str],
        operation: str,
        value: float,
        at: float,
        caused_by: str,
        detail: str,
        account: Account | None,
        now: float,
    ) -> Effects:
        """An admin sets (`set`) or changes (`add`) a lead's engagement in `scores`: kept as
        an adjustment signal per score, so each score still adds up from its signals. When
        the new scores earn a stage, the move is a transition with reason `adjustment`."""
        effects = Effects()
        self._advance_clock(state, at)
        parts = self.score_parts(state)
        for name in scores:
            current = parts[name][1]
            delta = value - current if operation == "set" else value
            self._add_adjustment(
                state, ADJUSTMENT_PREFIX + name, [delta, state.as_of or at, 1, 0, at]
            )
        reached, qualified_by = self.reached(state)
        if state.allowed is None:
            state.allowed = allowed_rank(state, self.rules, account.traits if account else None)
        move = automatic_move(
            stage=state.stage,
            reached=reached,
            trigger=None,
            disqualify_rule=None,
            allowed_rank=state.allowed[0],
        )
        if move is not None:
            self.move(
                state,
                Move(move.to_stage, "adjustment"),
                effects,
                caused_by=caused_by,
                occurred_at=at,
                account=account,
                now=now,
                detail=detail,
                qualified_by=qualified_by,
            )
        self.account_follows(state, account, effects, caused_by=caused_by, at=at, now=now)
        self.note_scores(state)
        return effects

    def history_shares(
        self,
        state: LeadState,
        events: Sequence[tuple[float, float, bool]],
        score: str = DEFAULT_SCORE,
        at: float | None = None,
    ) -> tuple[list[float], float]:
        """Each stored event's share of the lead's engagement in `score` (the default one
        unless named) as of `at` (by default its clock, the last event's time), to the
        cent, and the share of events not listed (older than the page asked for, or past
        the history's retention). `events` are (time, counted points in that score,
        superseded): a superseded event's points no longer count (the lead was recycled
        since)."""
        clock = state.as_of or 0.0
        when = clock if at is None else max(at, clock)
        exact = [
            0.0 if superseded else points * self.rules.decay_factor(when - ts)
            for ts, points, superseded in events
        ]
        fit, exact_engagement = self.score_parts(state, when)[score]
        engagement = records.score_doc(fit, exact_engagement)["engagement"]
        shares = records.apportion([*exact, exact_engagement - sum(exact)], engagement)
        return shares[:-1], shares[-1]

    # -- identity ------------------------------------------------------------------------

    def merge(
        self,
        target: LeadState,
        source: LeadState,
        *,
        event: Event,
        account: Account | None,
        now: float,
    ) -> Effects:
        """Fold an anonymous lead into the identified one: activity, limits, score, stage.

        Engagement from both sides is decayed to the later of their clocks, so the result is
        what one lead would have had; a stage change is a transition with reason `merge`.
        """
        effects = Effects()
        if source.as_of is not None:
            if target.as_of is None:
                target.as_of = source.as_of
                target.engagement = source.engagement
            else:
                latest = max(target.as_of, source.as_of)
                target.engagement = target.engagement * self.rules.decay_factor(
                    latest - target.as_of
                ) + source.engagement * self.rules.decay_factor(latest - source.as_of)
                target.as_of = latest
        for rule_id, times in source.counted.items():
            target.counted[rule_id] = sorted(target.counted.get(rule_id, []) + times)
        for rule_id, (value, as_of, hits, ignored, last_seen) in source.signals.items():
            signal = target.signals.get(rule_id)
            if signal is None:
                target.signals[rule_id] = [value, as_of, hits, ignored, last_seen]
                continue
            # Both contributions decayed to the later of the two moments they are as of.
            at = max(signal[AS_OF], as_of)
            signal[VALUE] = signal[VALUE] * self.rules.decay_factor(
                at - signal[AS_OF]
            ) + value * self.rules.decay_factor(at - as_of)
            signal[AS_OF] = at
            signal[HITS] += hits
            signal[IGNORED] += ignored
            signal[LAST_SEEN] = max(signal[LAST_SEEN], last_seen)
        target.traits = deep_merge(source.traits, target.traits)
        if target.account_id is None:
            target.account_id = source.account_id
        target.pending_trigger = _strongest(target.pending_trigger, source.pending_trigger)
        target.engagement_by = None  # derived again from the merged signals
        for name, stage in source.qualified.items():
            if RANK[stage] > RANK[target.qualified.get(name, LEAD)]:
                target.qualified[name] = stage
        book = self.journey
        if book is not None and source.journey is not None:
            moves = effects.journey_moves
            before = target.journey.phase if target.journey is not None else None
            target.journey = merge_journeys(
                book,
                target.journey,
                source.journey,
                moves,
                lead_id=target.lead_id,
                at=event.ts,
                caused_by=event.message_id,
                ruleset_version=self.rules.version,
            )
            if (
                target.journey.phase != before
                and self.accounts is not None
                and account is not None
                and account.account_id == target.account_id
            ):
                follow_members(
                    book,
                    account,
                    target.lead_id,
                    book.rank(target.journey.phase),
                    moves,
                    at=event.ts,
                    caused_by=event.message_id,
                    ruleset_version=self.rules.version,
                )
        self.refresh_fit(target, account)
        stage = furthest_stage(target.stage, source.stage)
        if stage != target.stage:
            self.move(
                target,
                Move(stage, "merge"),
                effects,
                caused_by=event.message_id,
                occurred_at=event.ts,
                account=account,
                now=now,
            )
        return effects
