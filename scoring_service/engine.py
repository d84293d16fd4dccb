"""The rules engine: (lead state, event, rule set) -> (new state, effects). Pure: no I/O.

The engine is built in three layers, each a module: a lead's scores and their explanations
(scoring_service/lead_scores.py), events and routing (scoring_service/routing.py), and here
what acts on leads from outside the event stream: sales feedback and the follow-up deadline
(the handoff), adjustments by hand, merging identities, erasing a member, and re-scoring on
a new version.

The state is updated in place: the batch that loaded it owns it, and copying every lead on
every event would cost more than the scoring itself. Callers that need the old state (a
simulation, say) copy it first.
"""

from __future__ import annotations

from collections.abc import Sequence

from scoring_service.effects import Effects, Hit
from scoring_service.intake import Event
from scoring_service.journey import follow_members
from scoring_service.journey import merge as merge_journeys
from scoring_service.lead_scores import higher_stage
from scoring_service.routing import RECYCLABLE, Router, allowed_rank, deep_merge
from scoring_service.scores import ADJUSTMENT_PREFIX
from scoring_service.state import (
    AS_OF,
    HITS,
    IGNORED,
    LAST_SEEN,
    VALUE,
    Account,
    LeadState,
)
from stage_router.lifecycle import (
    LEAD,
    RANK,
    RECYCLED,
    IllegalMove,
    Move,
    automatic_move,
    feedback_move,
    furthest_stage,
)


class Engine(Router):
    """Scores events for one active rule set."""

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
        state.model_kept = False
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
        state.engagement_by, state.model_kept = None, False  # derived again: from no signals

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

    def erase_member(self, account: Account, lead_id: str, *, at: float, caused_by: str) -> Effects:
        """A member erased on request: the account is scored and placed in the buyer journey
        as if the member had never been one (stages never move down on their own, so its
        stage stays)."""
        effects = Effects()
        scorer = self.accounts
        if scorer is None:
            return effects
        scorer.forget(account, lead_id)
        self.phase_without_member(account, effects, at=at, caused_by=caused_by)
        return effects

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
        target.pending_trigger = higher_stage(target.pending_trigger, source.pending_trigger)
        # Derived again from the merged signals.
        target.engagement_by, target.model_kept = None, False
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
