"""A learned score, computed and explained exactly. Pure: no I/O.

A model (schemas/model_score.py) is a logistic regression: log-odds = intercept + the sum of
each feature's weight times its scaled value. Calibration maps the log-odds to a
probability, and the score is that probability on a 0-100 scale. Every feature's part is
kept: in log-odds they add up to the logit exactly (less the intercept), and in points they
share the distance between the score and the score of a lead at the intercept in proportion
to their log-odds, so the points add up to the score too. A lead's top reasons for and
against are the features with the largest parts of either sign.

Features are read from the lead's state as of its own clock (never the wall clock), so a
replay of the same events gives the same probability.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final

from schemas.model_score import ModelSpec
from scoring_service.state import AS_OF, HITS, VALUE, LeadState

if TYPE_CHECKING:  # rules.py compiles the scores, which compile their models
    from scoring_service.rules import CompiledRuleSet

DAY: Final = 86400.0
GRADE_LETTERS: Final = ("A", "B", "C", "D")
# Features that describe who the lead is (their parts count as the score's fit); the rest
# describe what it did (engagement).
FIT_KINDS: Final = ("fit:",)
# A record explains a model score by its largest parts; the rest are summed as one.
EXPLAINED_PARTS: Final = 8


def features_of(
    state: LeadState, rules: CompiledRuleSet, at: float | None = None
) -> dict[str, float]:
    """Every feature the lead has a value for (the rest are 0), as of `at` (by default its
    clock: the latest event time)."""
    clock = at if at is not None else (state.as_of or 0.0)
    values: dict[str, float] = {}
    for rule_id, signal in state.signals.items():
        rule = rules.by_id.get(rule_id)
        if rule is None:
            continue  # an adjustment, or a rule no longer in the rule set
        decayed = signal[VALUE] * rules.decay_factor(clock - signal[AS_OF])
        values["rule:" + rule_id] = decayed / rule.points if rule.points else signal[HITS]
    for rule_id in state.fit_rules:
        values["fit:" + rule_id] = 1.0
    journey = state.journey
    if journey is not None:
        if journey.phase is not None:
            values["journey:" + journey.phase] = 1.0
        if journey.first_touch:
            values["first_touch:" + str(journey.first_touch[0])] = 1.0
            values["tenure_days"] = max(
                0.0, ((state.as_of or clock) - float(journey.first_touch[1])) / DAY
            )
        if journey.last_touch:
            values["last_touch:" + str(journey.last_touch[0])] = 1.0
    if state.account_coverage:
        values["account:coverage"] = state.account_coverage
    if state.account_score:
        values["account:score"] = state.account_score
    return values


def _sigmoid(z: float) -> float:
    if z >= 0:
        return 1.0 / (1.0 + math.exp(-z))
    e = math.exp(z)
    return e / (1.0 + e)


@dataclass(frozen=True, slots=True)
class Part:
    """One feature's share of a lead's score."""

    feature: str
    value: float
    log_odds: float
    points: float


@dataclass(frozen=True, slots=True)
class ModelResult:
    probability: float
    points: float  # 0-100
    logit: float  # before calibration
    base_points: float  # the score of a lead whose every feature sits at its mean
    parts: tuple[Part, ...]  # in the model's feature order

    def reasons(self, count: int = 3) -> tuple[list[Part], list[Part]]:
        """The features that raise the score most, and those that lower it most."""
        ranked = sorted(self.parts, key=lambda p: (-p.log_odds, p.feature))
        up = [p for p in ranked if p.log_odds > 0][:count]
        down = [p for p in reversed(ranked) if p.log_odds < 0][:count]
        return up, down


class CompiledModel:
    """A model ready to score leads."""

    def __init__(
        self, spec: ModelSpec, points: Mapping[str, float] | None = None, slot: int = 0
    ) -> None:
        """`points`: each engagement rule's points in the rule set the model is published
        in (the hot path reads a rule's decayed hits without looking the rule up); `slot`:
        where its running sum sits in `LeadState.model_part`."""
        self.spec = spec
        self.slot = slot
        self.names = [f.name for f in spec.features]
        self.weights = [f.weight / f.scale for f in spec.features]
        self.means = [f.mean for f in spec.features]
        self.intercept = spec.intercept
        self.slope = spec.calibration.slope
        self.offset = spec.calibration.offset
        self.bands = spec.bands
        self.base_points = 100.0 * _sigmoid(self.slope * self.intercept + self.offset)
        # Which part of the score each feature's share counts in.
        self.kinds = ["fit" if n.startswith(FIT_KINDS) else "engagement" for n in self.names]
        # A feature's part when the lead lacks it (its value is 0).
        self.absent_parts = [-w * m for w, m in zip(self.weights, self.means, strict=True)]
        self.absent_order = sorted(
            range(len(self.names)), key=lambda i: _rank(self.absent_parts, self.names, i)
        )
        # For the hot path, which needs only the points split into fit and engagement: a
        # feature a lead lacks adds -weight * mean whatever the lead, so those add up once,
        # per kind, and a lead's score visits only the features it has.
        self.by_name = {
            name: (w, name.startswith(FIT_KINDS))
            for name, w in zip(self.names, self.weights, strict=True)
        }
        self.absent_fit = math.fsum(
            -w * m
            for n, w, m in zip(self.names, self.weights, self.means, strict=True)
            if n.startswith(FIT_KINDS)
        )
        self.absent_engagement = math.fsum(
            -w * m
            for n, w, m in zip(self.names, self.weights, self.means, strict=True)
            if not n.startswith(FIT_KINDS)
        )
        # The weights by what they read, for scoring a lead without building its features.
        # A rule's decayed hits are its decayed points over its points, and every signal
        # decays at one half-life, so the rules' part is itself a decayed sum: the engine
        # keeps it on the lead (`LeadState.model_part`), adding `rule_gain` (weight per
        # point) times each hit's points. Rules worth no points count by hits; rules whose
        # points were not given are looked up on every call.
        self.rule_gain: dict[str, float] = {}
        self.by_hits: dict[str, float] = {}
        self.by_lookup: dict[str, float] = {}
        self.by_fit: dict[str, float] = {}
        self.by_phase: dict[str, float] = {}
        self.by_first: dict[str, float] = {}
        self.by_last: dict[str, float] = {}
        self.tenure = 0.0
        self.by_account: dict[str, float] = {}
        tables: dict[str, dict[str, float]] = {
            "account": self.by_account,
            "fit": self.by_fit,
            "journey": self.by_phase,
            "first_touch": self.by_first,
            "last_touch": self.by_last,
        }
        known = points or {}
        for name, w in zip(self.names, self.weights, strict=True):
            kind, _, key = name.partition(":")
            if name == "tenure_days":
                self.tenure = w
            elif kind == "rule":
                worth = known.get(key)
                if worth is None:
                    self.by_lookup[key] = w
                elif worth:
                    self.rule_gain[key] = w / worth
                else:
                    self.by_hits[key] = w
            else:
                tables[kind][key] = w
        self.reads_signals = bool(self.by_hits or self.by_lookup)
        self.reads_account = bool(self.by_account)
        self.coverage_weight = self.by_account.get("coverage", 0.0)
        self.account_weight = self.by_account.get("score", 0.0)
        self.reads_journey = bool(self.by_phase or self.by_first or self.by_last or self.tenure)
        # For explaining a lead straight from its state (`explain_lead`): where each feature
        # it may have sits, by what the feature reads, so no feature is named to be found.
        # A rule's entry holds its points in the rule set (0: counted by hits; None: not
        # known when compiled, looked up).
        self.rule_at: dict[str, tuple[int, float | None]] = {}
        self.fit_at: dict[str, int] = {}
        self.phase_at: dict[str, int] = {}
        self.first_at: dict[str, int] = {}
        self.last_at: dict[str, int] = {}
        self.tenure_at = self.coverage_at = self.account_at = -1
        places: dict[str, dict[str, int]] = {
            "fit": self.fit_at,
            "journey": self.phase_at,
            "first_touch": self.first_at,
            "last_touch": self.last_at,
        }
        for i, name in enumerate(self.names):
            kind, _, key = name.partition(":")
            if name == "tenure_days":
                self.tenure_at = i
            elif name == "account:coverage":
                self.coverage_at = i
            elif name == "account:score":
                self.account_at = i
            elif kind == "rule":
                self.rule_at[key] = (i, known.get(key))
            else:
                places[kind][key] = i
        # Most features a lead has are yes-or-no (a fit rule, a phase, a channel) and most
        # shown are ones it lacks: their descriptions are the same for every lead.
        self.described_lacking = [f"{name} = {0.0:.4g}" for name in self.names]
        self.described_having = [f"{name} = {1.0:.4g}" for name in self.names]
        # Each feature's explanation line with all but its value and points filled in:
        # copying a small dictionary is cheaper than building one.
        self.lines = [
            _signal(name, described, kind, 0.0)
            for name, described, kind in zip(
                self.names, self.described_lacking, self.kinds, strict=True
            )
        ]
        self.base_line = _signal(
            "model:base", "the score of a lead at every feature's mean", "fit", self.base_points
        )
        self.rest_line = _signal(
            "model:other",
            f"{len(self.names) - EXPLAINED_PARTS} other features",
            "engagement",
            0.0,
        )

    def split(self, features: Mapping[str, float]) -> tuple[float, float]:
        """The lead's points as (fit, engagement): the score at the intercept and the parts
        of who it is, and the parts of what it did; they add up to its points. The
        definition from named features: the engine reads the same values off the lead
        (`split_lead`, `explain_lead`), and the tests hold both to it."""
        fit, engagement = self.absent_fit, self.absent_engagement
        by_name = self.by_name
        for name, value in features.items():
            known = by_name.get(name)
            if known is not None:
                if known[1]:
                    fit += known[0] * value
                else:
                    engagement += known[0] * value
        return self._points(fit, engagement)

    def split_lead(
        self,
        state: LeadState,
        rules: CompiledRuleSet,
        running: float,
        fitted: float,
        at: float | None = None,
    ) -> tuple[float, float]:
        """`split(features_of(state, rules, at))` on the hot path: the same values, with the
        rules' part `running` (as of the lead's clock) and the fit rules' part `fitted`
        kept by the engine, and the rest read straight from the lead."""
        engagement = self._engagement_lead(state, rules, running, at)
        return self._points(self.absent_fit + fitted, engagement)

    def total_lead(
        self, state: LeadState, rules: CompiledRuleSet, running: float, fitted: float
    ) -> float:
        """The lead's points as of its clock: `sum(split_lead(...))` without the split,
        for judging qualification on every event."""
        spread = self.absent_fit + fitted + self._engagement_lead(state, rules, running, None)
        return 100.0 * _sigmoid(self.slope * (self.intercept + spread) + self.offset)

    def _engagement_lead(
        self, state: LeadState, rules: CompiledRuleSet, running: float, at: float | None
    ) -> float:
        """The log-odds of what the lead did, as of `at` (by default its clock)."""
        clock = state.as_of or 0.0
        engagement = self.absent_engagement + (
            running if at is None else running * rules.decay_factor(at - clock)
        )
        if self.reads_signals:
            engagement += self._looked_up(state, rules, clock if at is None else at)
        if self.reads_account:
            engagement += self.coverage_weight * state.account_coverage
            engagement += self.account_weight * state.account_score
        journey = state.journey
        if journey is not None and self.reads_journey:
            # A touch is [channel, time]; the channel is always text.
            first = journey.first_touch
            last = journey.last_touch
            engagement += self._placed(
                journey.phase, first[0] if first else None, last[0] if last else None
            )
            if first and self.tenure:
                tenure = (clock - float(first[1])) / DAY
                engagement += self.tenure * (tenure if tenure > 0.0 else 0.0)
        return engagement

    def _placed(self, phase: str | None, first_channel: Any, last_channel: Any) -> float:
        """The log-odds of the lead's journey phase and its first and last touch channels.
        Looked up without a default: a default would be a new float on every call."""
        part = 0.0
        if phase is not None:
            weight = self.by_phase.get(phase)
            if weight is not None:
                part += weight
        if first_channel is not None:
            weight = self.by_first.get(first_channel)
            if weight is not None:
                part += weight
        if last_channel is not None:
            weight = self.by_last.get(last_channel)
            if weight is not None:
                part += weight
        return part

    def _looked_up(self, state: LeadState, rules: CompiledRuleSet, later: float) -> float:
        """The part of the rules the running sum does not keep: those worth no points
        (counted by hits) and those whose points were not known when compiled."""
        part = 0.0
        for rule_id, w in self.by_hits.items():
            signal = state.signals.get(rule_id)
            if signal is not None:
                part += w * signal[HITS]
        for rule_id, w in self.by_lookup.items():
            signal = state.signals.get(rule_id)
            rule = rules.by_id.get(rule_id)
            if signal is not None and rule is not None:
                decayed = signal[VALUE] * rules.decay_factor(later - signal[AS_OF])
                part += w * (decayed / rule.points if rule.points else signal[HITS])
        return part

    def _points(self, fit: float, engagement: float) -> tuple[float, float]:
        spread = fit + engagement
        points = 100.0 * _sigmoid(self.slope * (self.intercept + spread) + self.offset)
        if not spread:
            return points, 0.0
        share = (points - self.base_points) / spread
        return self.base_points + fit * share, engagement * share

    def score(self, features: Mapping[str, float]) -> ModelResult:
        """The lead's probability, points and every feature's part of them."""
        log_odds = [
            w * (features.get(name, 0.0) - mean)
            for name, w, mean in zip(self.names, self.weights, self.means, strict=True)
        ]
        logit = self.intercept + math.fsum(log_odds)
        probability = _sigmoid(self.slope * logit + self.offset)
        points = 100.0 * probability
        base = 100.0 * _sigmoid(self.slope * self.intercept + self.offset)
        spread = logit - self.intercept
        share = (points - base) / spread if spread else 0.0
        parts = tuple(
            Part(name, features.get(name, 0.0), part, part * share)
            for name, part in zip(self.names, log_odds, strict=True)
        )
        return ModelResult(probability, points, logit, base, parts)

    def label(self, points: float) -> str:
        """The grade (A-D) the score's bands give these points."""
        # One band fewer than letters: "D" is below them all.
        for letter, least in zip(GRADE_LETTERS, self.bands, strict=False):
            if points >= least:
                return letter
        return "D"

    def _largest(self, parts: list[float], values: list[float], own: list[int]) -> list[int]:
        """The indices of the EXPLAINED_PARTS largest parts, by `_rank`'s order: the lead's
        own features (a handful, with `values` not 0) ranked, merged with those it lacks,
        whose order is the same for every lead and was ranked once. Made for every record
        that explains the score, so it compares in place rather than building keys."""
        names = self.names
        ranked: list[int] = []  # the lead's own, by insertion
        for i in own:
            size = abs(parts[i])
            at = len(ranked)
            while at:
                other = abs(parts[ranked[at - 1]])
                if size > other or (size == other and names[i] < names[ranked[at - 1]]):
                    at -= 1
                else:
                    break
            ranked.insert(at, i)
        shown: list[int] = []
        k = 0
        for i in self.absent_order:
            if len(shown) == EXPLAINED_PARTS:
                return shown
            if values[i] != 0.0:
                continue  # the lead's own: ranked above
            size = abs(parts[i])
            while k < len(ranked) and len(shown) < EXPLAINED_PARTS:
                mine = ranked[k]
                other = abs(parts[mine])
                if other > size or (other == size and names[mine] < names[i]):
                    shown.append(mine)
                    k += 1
                else:
                    break
            if len(shown) < EXPLAINED_PARTS:
                shown.append(i)
        while k < len(ranked) and len(shown) < EXPLAINED_PARTS:
            shown.append(ranked[k])
            k += 1
        return shown

    def explain_lead(
        self, state: LeadState, rules: CompiledRuleSet, at: float | None = None
    ) -> tuple[float, float, list[dict[str, Any]]]:
        """The lead's points as (fit, engagement), as `split(features_of(state, rules, at))`
        gives them, and the score's explanation in the rules' shape
        (stage_router.records.SignalDoc): the score at the intercept, the largest parts, and
        the rest summed; their contributions add up to the points.

        Made for every record that names the score, so it reads the lead's features where
        they are kept, in `features_of`'s order (the sums come out the same to the bit),
        builds no `Part`s and names no feature it does not show: the parts of the features
        a lead lacks are the same for every lead, and only its own are computed. A feature
        the lead has at 0 has the part of one it lacks, and is ranked with those."""
        clock = at if at is not None else (state.as_of or 0.0)
        weights, means = self.weights, self.means
        parts = list(self.absent_parts)
        values = [0.0] * len(parts)
        own: list[int] = []
        fit, engagement = self.absent_fit, self.absent_engagement
        rule_at = self.rule_at
        for rule_id, signal in state.signals.items():
            place = rule_at.get(rule_id)
            if place is None:
                continue  # an adjustment, or a rule the model does not read
            i, worth = place
            if worth is None:
                rule = rules.by_id.get(rule_id)
                if rule is None:
                    continue  # a rule no longer in the rule set
                worth = rule.points
            if worth:
                decayed = signal[VALUE] * rules.decay_factor(clock - signal[AS_OF])
                value = decayed / worth
            else:
                value = signal[HITS]
            engagement += weights[i] * value
            if value != 0.0:
                parts[i] = weights[i] * (value - means[i])
                values[i] = value
                own.append(i)
        fit_at = self.fit_at
        for rule_id in state.fit_rules:
            index = fit_at.get(rule_id)
            if index is not None:
                fit += weights[index]
                parts[index] = weights[index] * (1.0 - means[index])
                values[index] = 1.0
                own.append(index)
        found: list[tuple[int, float]] = []  # the rest, in `features_of`'s order
        journey = state.journey
        if journey is not None:
            if journey.phase is not None:
                found.append((self.phase_at.get(journey.phase, -1), 1.0))
            if journey.first_touch:
                found.append((self.first_at.get(str(journey.first_touch[0]), -1), 1.0))
                tenure = ((state.as_of or clock) - float(journey.first_touch[1])) / DAY
                found.append((self.tenure_at, max(0.0, tenure)))
            if journey.last_touch:
                found.append((self.last_at.get(str(journey.last_touch[0]), -1), 1.0))
        if state.account_coverage:
            found.append((self.coverage_at, state.account_coverage))
        if state.account_score:
            found.append((self.account_at, state.account_score))
        for i, value in found:
            if i < 0:
                continue  # a feature the model does not read
            engagement += weights[i] * value
            if value != 0.0:
                parts[i] = weights[i] * (value - means[i])
                values[i] = value
                own.append(i)
        # As `_points`, with the share the explanation's lines need.
        spread = fit + engagement
        points = 100.0 * _sigmoid(self.slope * (self.intercept + spread) + self.offset)
        share = (points - self.base_points) / spread if spread else 0.0
        if spread:
            fit_points, engagement_points = self.base_points + fit * share, engagement * share
        else:
            fit_points, engagement_points = points, 0.0
        signals: list[dict[str, Any]] = [self.base_line.copy()]
        shown_parts = 0.0
        for i in self._largest(parts, values, own):
            line = self.lines[i].copy()
            value = values[i]
            if value == 1.0:
                line["description"] = self.described_having[i]
            elif value != 0.0:
                line["description"] = f"{self.names[i]} = {value:.4g}"
            line["contribution"] = parts[i] * share
            shown_parts += parts[i]
            signals.append(line)
        if len(parts) > EXPLAINED_PARTS:
            rest = self.rest_line.copy()
            rest["contribution"] = share * (spread - shown_parts)
            signals.append(rest)
        return fit_points, engagement_points, signals


def _rank(parts: list[float], names: list[str], i: int) -> tuple[float, str]:
    """Largest part first, by name among equals."""
    return -abs(parts[i]), names[i]


def _signal(feature: str, description: str, category: str, points: float) -> dict[str, Any]:
    return {
        "rule_id": feature,
        "description": description,
        "category": category,
        "points": None,
        "hits": 0,
        "ignored": 0,
        "contribution": points,
        "last_seen": None,
    }
