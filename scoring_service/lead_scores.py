"""A lead's scores under one rule set: fit from its traits, engagement from its events (decayed,
within each rule's limit), the named scores and grades, and the explanation of each that adds
up to it. Pure: no I/O. The base of the engine (scoring_service/engine.py), which adds routing
(scoring_service/routing.py), the sales handoff, adjustments and identity on top.
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right, insort
from collections.abc import Mapping, Sequence
from typing import Any, Final

from schemas.rule_set import DEFAULT_SCORE
from schemas.timefmt import iso
from scoring_service.accounts import AccountScorer
from scoring_service.effects import Hit
from scoring_service.intake import Event
from scoring_service.journey import JourneyBook, compile_journey
from scoring_service.model_score import CompiledModel
from scoring_service.rules import NAME_ONLY, PATH_ONLY, CompiledRule, CompiledRuleSet
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
from stage_router import records
from stage_router.lifecycle import (
    RANK,
    threshold_stage,
)


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


QUEUE_PREFIX: Final = records.QUEUE_PREFIX


def lead_label(entries: Mapping[str, records.ScoreEntryDoc]) -> str | None:
    """The lead's label: the default score's, else the first named score's that has one."""
    for entry in entries.values():
        if entry["label"] is not None:
            return entry["label"]
    return None


def higher_stage(a: tuple[str, str] | None, b: tuple[str, str] | None) -> tuple[str, str] | None:
    if a is None:
        return b
    if b is None:
        return a
    return b if RANK[b[0]] > RANK[a[0]] else a


class LeadScores:
    """The scores of leads under one compiled rule set."""

    def __init__(self, rules: CompiledRuleSet, *, account_features: bool = False) -> None:
        """`account_features`: keep the account's coverage and score on each lead
        (LeadState.account_coverage, _score) even when no learned score reads them, as
        training does, to learn from them."""
        self.rules = rules
        self._model_gains = rules.book.model_gains
        self.reads_account = account_features or any(
            model.reads_account for _, model in rules.book.learned
        )
        self.accounts = AccountScorer(rules, rules.accounts) if rules.accounts else None
        # The fit rules that hold for a lead nobody knows anything about yet (`not` rules
        # may): the same for every new anonymous visitor, so judged once.
        self._unknown_fit = self._matching_fit_rules({}, None)
        self.journey: JourneyBook | None = (
            compile_journey(rules.journey) if rules.journey is not None else None
        )

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
        book = self.rules.book
        fit_by: dict[str, float] | None = {} if book.several else None
        model_fit = book.model_fit if book.learned else None
        for rule in holding:
            if rule.for_default:
                fit += rule.points
            if fit_by is not None:
                for name in rule.named:
                    fit_by[name] = fit_by.get(name, 0.0) + rule.points
                if model_fit is not None:
                    _add_model_fit(fit_by, model_fit, rule.id)
            matched.append(rule.id)
            if rule.disqualify and disqualify is None:
                disqualify = rule.id
            if rule.promote_to:
                state.pending_trigger = higher_stage(
                    state.pending_trigger, (rule.promote_to, rule.id)
                )
        if state.fit_key is None or state.fit_key[0] != self.rules.version:
            # Another rule set: which score each signal counts for may have changed.
            state.engagement_by, state.model_kept = None, False
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
            if state.model_kept and factor != 1.0:
                state.decay_model_parts(factor)
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
        if state.model_kept:
            gains = self._model_gains.get(rule.id)
            if gains is not None:
                for slot, per_point in gains:
                    state.add_model_part(slot, per_point * gain)
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
                    trigger = higher_stage(trigger, (rule.promote_to, rule.id))
                if rule.disqualify and disqualify is None:
                    disqualify = rule.id
        return trigger, disqualify

    def explain(
        self, state: LeadState, at: float | None = None, score: str = DEFAULT_SCORE
    ) -> tuple[records.ScoreDoc, list[records.SignalDoc]]:
        """A score of the lead (the default one unless named) as of `at` (by default its
        clock, the latest event time) and every signal's contribution to it; the
        contributions add up to the total."""
        book = self.rules.book
        model = book.by_name[score].model if score in book.by_name else None
        if model is not None:
            fit, engagement, learned = model.explain_lead(state, self.rules, at)
            return records.explanation(learned, fit, engagement)  # type: ignore[arg-type]
        clock = state.as_of
        later = 1.0 if at is None or clock is None else self.rules.decay_factor(at - clock)
        signals: list[records.SignalDoc] = []
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

    def _member_named(self, state: LeadState) -> dict[str, float] | None:
        """What a member brings its account's named scores (None with one score)."""
        return self._named_sums(state)[1] if self.rules.book.several else None

    def _named_sums(self, state: LeadState) -> tuple[dict[str, float], dict[str, float]]:
        """The named scores' fit and engagement as of the lead's clock, derived from its fit
        rules and signals when not kept yet (then kept up as hits come). A learned score's
        fit is the log-odds its fit features add (`_add_model_fit`)."""
        book = self.rules.book
        if state.fit_by is None:
            fit_by: dict[str, float] = {}
            for rule_id in state.fit_rules:
                rule = self.rules.by_id.get(rule_id)
                if rule is not None:
                    for name in rule.named:
                        fit_by[name] = fit_by.get(name, 0.0) + rule.points
                if book.learned:
                    _add_model_fit(fit_by, book.model_fit, rule_id)
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

    def _keep_model_parts(self, state: LeadState) -> None:
        """Each model's part from the engagement rules it weighs, as of the lead's clock:
        derived from the signals when not kept yet (then kept up as hits come)."""
        if not state.model_kept:
            learned = self.rules.book.learned
            if len(learned) == 1:
                state.keep_model_part(self._model_part(state, learned[0][1]))
            else:
                state.keep_model_parts([self._model_part(state, model) for _, model in learned])

    def _model_part(self, state: LeadState, model: CompiledModel) -> float:
        """A model's part from the engagement rules it weighs, derived from the signals as
        of the lead's clock. A lead has few signals (none, when this runs for a new lead)
        and a model may weigh every rule: the signals are the shorter walk."""
        clock = state.as_of or 0.0
        part = 0.0
        gains = model.rule_gain
        for rule_id, signal in state.signals.items():
            per_point = gains.get(rule_id)
            if per_point is not None:
                value = signal[VALUE]
                if signal[AS_OF] != clock:
                    value *= self.rules.decay_factor(clock - signal[AS_OF])
                part += per_point * value
        return part

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
            if book.learned:
                self._keep_model_parts(state)
            for score in book.scores[1:]:
                name = score.name
                model = score.model
                if model is not None:
                    parts[name] = model.split_lead(
                        state,
                        self.rules,
                        state.model_part_of(model.slot),
                        fit_by.get(name, 0.0),
                        at,
                    )
                else:
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
            if book.learned and not state.model_kept:
                self._keep_model_parts(state)
            for score in book.scores[1:]:
                name = score.name
                model = score.model
                if model is not None:
                    # Judged on every event: the first model's part read off the lead, and
                    # its fit part looked up without a default (which would be a new float).
                    slot = model.slot
                    fitted = fit_by.get(name)
                    totals[name] = model.total_lead(
                        state,
                        self.rules,
                        state.model_part if slot == 0 else state.model_part_of(slot),
                        0.0 if fitted is None else fitted,
                    )
                else:
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


def _add_model_fit(
    fit_by: dict[str, float],
    model_fit: dict[str, tuple[tuple[str, float], ...]],
    rule_id: str,
) -> None:
    """A matching fit rule's weight in each learned score that reads it. No rule counts
    for a learned score, so its entry in `fit_by` holds its fit features' log-odds."""
    weights = model_fit.get(rule_id)
    if weights is not None:
        for name, weight in weights:
            kept = fit_by.get(name)
            fit_by[name] = weight if kept is None else kept + weight
