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
from typing import Any

from schemas.model_score import ModelSpec
from scoring_service.rules import CompiledRuleSet
from scoring_service.state import AS_OF, HITS, VALUE, Account, LeadState

DAY = 86400.0
GRADE_LETTERS = ("A", "B", "C", "D")


def features_of(
    state: LeadState, account: Account | None, rules: CompiledRuleSet
) -> dict[str, float]:
    """Every feature the lead has a value for (the rest are 0), as of its clock."""
    clock = state.as_of or 0.0
    values: dict[str, float] = {}
    for rule_id, signal in state.signals.items():
        rule = rules.by_id.get(rule_id)
        if rule is None:
            continue  # an adjustment, or a rule no longer in the rule set
        decayed = signal[VALUE] * rules.decay_factor(clock - signal[AS_OF])
        values["rule:" + rule_id] = decayed / rule.points if rule.points else signal[HITS]
    for rule_id in state.fit_rules:
        values["fit:" + rule_id] = 1.0
    if account is not None:
        values["account:coverage"] = account.coverage
        values["account:score"] = account.fit + account.engagement + account.coverage
    journey = state.journey
    if journey is not None:
        if journey.phase is not None:
            values["journey:" + journey.phase] = 1.0
        if journey.first_touch:
            values["first_touch:" + str(journey.first_touch[0])] = 1.0
            values["tenure_days"] = max(0.0, (clock - float(journey.first_touch[1])) / DAY)
        if journey.last_touch:
            values["last_touch:" + str(journey.last_touch[0])] = 1.0
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

    def __init__(self, spec: ModelSpec) -> None:
        self.spec = spec
        self.names = [f.name for f in spec.features]
        self.weights = [f.weight / f.scale for f in spec.features]
        self.means = [f.mean for f in spec.features]
        self.intercept = spec.intercept
        self.slope = spec.calibration.slope
        self.offset = spec.calibration.offset
        self.bands = spec.bands

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
        return next(
            (GRADE_LETTERS[i] for i, least in enumerate(self.bands) if points >= least), "D"
        )

    def explain(self, result: ModelResult, count: int = 3) -> dict[str, Any]:
        """The score as published: points, probability, grade, and the top reasons."""
        up, down = result.reasons(count)

        def doc(part: Part) -> dict[str, Any]:
            return {
                "feature": part.feature,
                "value": round(part.value, 4),
                "log_odds": round(part.log_odds, 4),
                "points": round(part.points, 2),
            }

        return {
            "points": round(result.points, 2),
            "probability": round(result.probability, 4),
            "label": self.label(result.points),
            "for": [doc(p) for p in up],
            "against": [doc(p) for p in down],
        }
