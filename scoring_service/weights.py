"""Proposed rule points from sales outcomes: a transparent, regularised model. Pure.

Each lead handed to sales is one sample: per rule, how often it hit before the handoff
(engagement rules: counted hits; fit rules: 1 when the lead matched it), and the outcome
(1 won, 0 lost; or 1 qualified, 0 rejected). A logistic regression with an L2 penalty
(scikit-learn) learns how much each hit moves the odds of a good outcome. Its coefficients
are turned into whole points on the rule set's own scale: they are multiplied by one factor
chosen so the proposed points have the same total size (sum of absolute points) as the
old points of the same rules, so the thresholds keep their meaning. Rules no sample hit keep
their points: there is nothing to learn about them (nor about a rule fewer than 10 decided
leads hit: its weight would be noise).

The fit is judged on leads it did not see: a seeded, stratified split keeps 30% aside, and
the AUC (the chance a good lead outranks a bad one) of the old and the proposed points is
computed there, each scoring a lead as the sum of points times hits. Same data and seed,
same proposal.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

# Below these the fit says more about chance than about the rules.
MIN_SAMPLES = 40
MIN_PER_CLASS = 10
# A rule hit by fewer decided leads keeps its points: a weight from a handful is noise.
MIN_RULE_LEADS = 10
HELD_OUT_SHARE = 0.3
# Inverse strength of the L2 penalty: smaller pulls coefficients harder toward 0.
REGULARISATION_C = 1.0


class TooFewOutcomes(ValueError):
    """Not enough decided leads (of either outcome) to fit anything worth publishing."""


@dataclass(frozen=True, slots=True)
class Sample:
    lead_id: str
    hits: Mapping[str, float]  # rule id -> hits before the handoff (fit rules: 0 or 1)
    good: bool


@dataclass(frozen=True, slots=True)
class Proposal:
    points: dict[str, tuple[float, float]]  # rule id -> (old points, proposed points)
    unchanged: list[str]  # rules too few samples hit: kept as they were
    samples: int
    good: int
    trained_on: int
    held_out: int
    auc_old: float
    auc_proposed: float
    scale: float

    def to_dict(self) -> dict[str, Any]:
        return {
            "rules": [
                {"rule_id": rule_id, "old_points": old, "new_points": new}
                for rule_id, (old, new) in sorted(self.points.items())
            ],
            "unchanged": self.unchanged,
            "samples": self.samples,
            "good_outcomes": self.good,
            "trained_on": self.trained_on,
            "held_out": self.held_out,
            "auc_old": self.auc_old,
            "auc_proposed": self.auc_proposed,
        }


def propose_points(
    samples: Sequence[Sample], old_points: Mapping[str, float], *, seed: int = 0
) -> Proposal:
    """Fit points for the rules in `old_points` from `samples`; TooFewOutcomes when the
    samples cannot support a fit."""
    # Imported here: scikit-learn takes a second to import, and only this needs it.
    import numpy as np
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score
    from sklearn.model_selection import train_test_split

    good = sum(1 for s in samples if s.good)
    bad = len(samples) - good
    if len(samples) < MIN_SAMPLES or min(good, bad) < MIN_PER_CLASS:
        raise TooFewOutcomes(
            f"{len(samples)} decided leads ({good} good, {bad} bad): a proposal needs at "
            f"least {MIN_SAMPLES}, with {MIN_PER_CLASS} of each outcome"
        )
    seen = sorted(
        r for r in old_points if sum(1 for s in samples if s.hits.get(r)) >= MIN_RULE_LEADS
    )
    if not seen:
        raise TooFewOutcomes("no decided lead hit any rule of this version")
    x = np.array([[float(s.hits.get(r, 0.0)) for r in seen] for s in samples])
    y = np.array([1 if s.good else 0 for s in samples])
    x_train, x_test, y_train, y_test = train_test_split(
        x, y, test_size=HELD_OUT_SHARE, random_state=seed, stratify=y
    )
    model = LogisticRegression(C=REGULARISATION_C, max_iter=1000)
    model.fit(x_train, y_train)
    weights = model.coef_[0]
    old = np.array([old_points[r] for r in seen])
    size = float(np.abs(weights).sum())
    scale = float(np.abs(old).sum()) / size if size > 0 else 0.0
    # Whole points, within what a rule set allows.
    new = np.clip(np.round(weights * scale), -1000, 1000)
    points = {r: (float(old_points[r]), float(p) + 0.0) for r, p in zip(seen, new, strict=True)}
    return Proposal(
        points=points,
        unchanged=sorted(set(old_points) - set(seen)),
        samples=len(samples),
        good=good,
        trained_on=len(y_train),
        held_out=len(y_test),
        auc_old=round(float(roc_auc_score(y_test, x_test @ old)), 4),
        auc_proposed=round(float(roc_auc_score(y_test, x_test @ new)), 4),
        scale=scale,
    )


def with_points(document: Mapping[str, Any], points: Mapping[str, float]) -> dict[str, Any]:
    """A copy of a rule-set document (JSON form) with the given rules' points replaced."""
    copy = dict(document)
    copy["rules"] = [
        {**rule, "points": points[rule["id"]]} if rule.get("id") in points else rule
        for rule in document.get("rules", [])
    ]
    return copy


def comment(proposal: Proposal, *, source: int, window: str, target: str) -> str:
    """What the new version's comment records: where it came from and how well it fits."""
    changes = ", ".join(
        f"{rule_id} {old:g}->{new:g}"
        for rule_id, (old, new) in sorted(proposal.points.items())
        if old != new
    )
    return (
        f"proposed from version {source}: logistic regression (L2, C={REGULARISATION_C:g}) "
        f"on {target} outcomes of {proposal.samples} leads handed off {window}; held-out AUC "
        f"{proposal.auc_old:.3f} -> {proposal.auc_proposed:.3f} on {proposal.held_out} leads; "
        f"points: {changes or 'unchanged'}"
    )[:1000]
