"""Training a learned score on the outcomes the service holds. Pure: no I/O.

Each sample is a lead as it stood when it was handed to sales (its features), when that
was, and whether the outcome came (won, or qualified). Samples are ordered by time and the
most recent 20% are kept aside: the model learns from the older ones and is judged on the
newer, as it will be used. A logistic regression with an L2 penalty (scikit-learn) learns the
weights on standardised features; Platt scaling, fitted on five-fold out-of-fold log-odds of
the training samples, calibrates them into probabilities. Everything the engine needs is
returned as data (schemas/model_score.py): no pickled estimator.

The report gives what the best commercial products show and their users ask for: AUC and
log loss on the held-out samples (and the AUC of the rules' own score there, when given),
calibration by decile, conversion by grade band, and the share of conversions in the top
two bands. Fewer than MIN_PER_CLASS positive or negative outcomes are refused.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from schemas.model_score import MAX_FEATURES, Calibration, Feature, ModelSpec, Training
from scoring_service.engine import Engine
from scoring_service.intake import Event
from scoring_service.model_score import CompiledModel, features_of
from scoring_service.pipeline import Workspace, score_event
from scoring_service.state import LeadState

# The same refusal as fitting rule points: too few decided leads to learn from.
from scoring_service.weights import TooFewOutcomes

__all__ = ["Report", "Sample", "TooFewOutcomes", "train"]

MIN_PER_CLASS = 40
HELD_OUT_SHARE = 0.2
REGULARISATION_C = 1.0
# Features fewer samples have a value for are left out: their weight would be noise.
MIN_FEATURE_SAMPLES = 10
CALIBRATION_FOLDS = 5


@dataclass(frozen=True, slots=True)
class Sample:
    lead_id: str
    at: float  # epoch seconds: when the lead was handed off
    features: Mapping[str, float]
    good: bool
    rules_score: float | None = None  # the rules' own score then, to compare rankings


Handoff = tuple[str, float, bool]  # lead id, handed off at (epoch seconds), good outcome


def replay_chunks(
    handoffs: Sequence[Handoff],
    account_of: Mapping[str, str | None],
    members_of: Mapping[str, Collection[str]],
    limit: int,
) -> list[tuple[list[str], list[Handoff]]]:
    """The decided leads cut into pieces to replay one at a time (`samples_at_handoffs`):
    each piece lists the leads whose history to read and the handoffs to read off. A lead
    with an account comes with all of the account's members (its roll-up needs them), an
    account never split; pieces are filled up to `limit` leads."""
    groups: dict[str, tuple[set[str], list[Handoff]]] = {}
    for handoff in handoffs:
        account = account_of.get(handoff[0])
        key = "account:" + account if account is not None else "lead:" + handoff[0]
        if key not in groups:
            groups[key] = (set(members_of.get(account, ())) if account else set(), [])
        groups[key][0].add(handoff[0])
        groups[key][1].append(handoff)
    pieces: list[tuple[list[str], list[Handoff]]] = []
    for members, theirs in groups.values():
        if not pieces or len(pieces[-1][0]) + len(members) > limit:
            pieces.append(([], []))
        pieces[-1][0].extend(sorted(members))
        pieces[-1][1].extend(theirs)
    return pieces


def samples_at_handoffs(
    engine: Engine, events: Iterable[Event], decided: Sequence[Handoff]
) -> list[Sample]:
    """Decided leads (lead id, handoff time, good) as each stood at its handoff: `events`
    (theirs and their accounts' other members', in any order) replayed from an empty start
    in time order through one workspace, so accounts roll up from their members as they did
    live, and each lead is read once every event up to its handoff is in. Its features are
    what the engine read at that moment, its account's included; nothing later leaks in."""
    pending = sorted(decided, key=lambda d: (d[1], d[0]))
    ws = Workspace()
    samples: list[Sample] = []

    def read(lead_id: str, at: float, good: bool) -> Sample:
        state = ws.leads.get(ws.canonical(lead_id)) or LeadState(lead_id=lead_id)
        return Sample(lead_id, at, features_of(state, engine.rules), good, state.total)

    taken = 0
    for event in sorted(events, key=lambda e: e.ts):
        while taken < len(pending) and pending[taken][1] < event.ts:
            samples.append(read(*pending[taken]))
            taken += 1
        if taken == len(pending):
            break  # what comes after the last handoff cannot change a sample
        score_event(ws, engine, event, now=event.ts)
    samples.extend(read(*rest) for rest in pending[taken:])
    return samples


@dataclass
class Report:
    samples: int
    positives: int
    trained_on: int
    held_out: int
    auc: float
    auc_rules: float | None
    log_loss: float
    # Per decile of predicted probability (held out): leads, mean predicted, observed rate.
    calibration: list[dict[str, float]] = field(default_factory=list)
    # Per grade band (held out): leads, conversions, rate.
    bands: dict[str, dict[str, float]] = field(default_factory=dict)
    top_bands_share_of_conversions: float = 0.0
    top_bands_share_of_leads: float = 0.0
    # The largest calibration error of a decile holding at least 100 leads (None: none did).
    calibration_error: float | None = None
    features: list[dict[str, float | str]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "samples": self.samples,
            "positives": self.positives,
            "trained_on": self.trained_on,
            "held_out": self.held_out,
            "auc": self.auc,
            "auc_rules": self.auc_rules,
            "log_loss": self.log_loss,
            "calibration_error": self.calibration_error,
            "calibration": self.calibration,
            "bands": self.bands,
            "top_bands_share_of_conversions": self.top_bands_share_of_conversions,
            "top_bands_share_of_leads": self.top_bands_share_of_leads,
            "features": self.features,
        }


def _check_counts(samples: Sequence[Sample]) -> None:
    good = sum(1 for s in samples if s.good)
    bad = len(samples) - good
    if good < MIN_PER_CLASS or bad < MIN_PER_CLASS:
        raise TooFewOutcomes(
            f"{good} good and {bad} bad outcomes; at least {MIN_PER_CLASS} of each are needed "
            "to learn anything worth publishing"
        )


def _feature_names(samples: Sequence[Sample]) -> list[str]:
    counts: dict[str, int] = {}
    for sample in samples:
        for name, value in sample.features.items():
            if value:
                counts[name] = counts.get(name, 0) + 1
    kept = [n for n, c in counts.items() if c >= MIN_FEATURE_SAMPLES]
    # The most common first, so a cap keeps the features most leads have.
    kept.sort(key=lambda n: (-counts[n], n))
    return sorted(kept[:MAX_FEATURES])


def _auc(labels: Sequence[bool], scores: Sequence[float]) -> float:
    from sklearn.metrics import roc_auc_score

    return round(float(roc_auc_score(labels, scores)), 4)


def train(
    samples: Sequence[Sample],
    *,
    outcome: str = "won",
    horizon_days: float = 90,
    bands: tuple[float, float, float] = (60.0, 35.0, 15.0),
    now: datetime | None = None,
) -> tuple[ModelSpec, Report]:
    """A model of `outcome` from `samples`, and how it did on the most recent ones."""
    # Imported here: scikit-learn takes a second to import, and only training needs it.
    import numpy as np
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import log_loss
    from sklearn.model_selection import KFold, cross_val_predict

    _check_counts(samples)
    ordered = sorted(samples, key=lambda s: (s.at, s.lead_id))
    cut = int(len(ordered) * (1 - HELD_OUT_SHARE))
    train_set, test_set = ordered[:cut], ordered[cut:]
    names = _feature_names(train_set)

    def matrix(rows: Sequence[Sample]) -> Any:
        return np.array([[s.features.get(n, 0.0) for n in names] for s in rows], dtype=float)

    x_train = matrix(train_set)
    y_train = np.array([s.good for s in train_set], dtype=int)
    y_test = np.array([s.good for s in test_set], dtype=int)
    if len(set(y_train.tolist())) < 2 or len(set(y_test.tolist())) < 2:
        raise TooFewOutcomes("the older or the newer samples hold only one kind of outcome")
    means = x_train.mean(axis=0) if names else np.zeros(0)
    scales = x_train.std(axis=0) if names else np.zeros(0)
    scales[scales == 0] = 1.0
    z_train = (x_train - means) / scales
    regression = LogisticRegression(C=REGULARISATION_C, max_iter=1000)
    regression.fit(z_train, y_train)
    # Platt scaling on log-odds the model gave samples it was not fitted on.
    folds = KFold(n_splits=CALIBRATION_FOLDS)
    out_of_fold = cross_val_predict(
        LogisticRegression(C=REGULARISATION_C, max_iter=1000),
        z_train,
        y_train,
        cv=folds,
        method="decision_function",
    )
    # Calibrated on the most recent fold: the newest outcomes say best what a probability
    # means now (the base rate drifts as campaigns and sales change).
    recent = len(out_of_fold) - len(out_of_fold) // CALIBRATION_FOLDS
    platt = LogisticRegression(C=1e6, max_iter=1000)
    platt.fit(out_of_fold[recent:].reshape(-1, 1), y_train[recent:])
    slope = float(platt.coef_[0][0])
    offset = float(platt.intercept_[0])
    if slope <= 0:  # the model ranks no better than chance: keep its own probabilities
        slope, offset = 1.0, 0.0
    spec = ModelSpec(
        outcome=outcome,
        horizon_days=horizon_days,
        intercept=float(regression.intercept_[0]),
        features=[
            Feature(name=n, weight=float(w), mean=float(m), scale=float(s))
            for n, w, m, s in zip(names, regression.coef_[0], means, scales, strict=True)
        ],
        calibration=Calibration(slope=slope, offset=offset),
        bands=bands,
    )
    model = CompiledModel(spec)
    predicted = [model.score(s.features).probability for s in test_set]
    report = _report(samples, train_set, test_set, predicted, model)
    report.log_loss = round(float(log_loss(y_test, predicted, labels=[0, 1])), 4)
    times = [s.at for s in ordered]
    spec = spec.model_copy(
        update={
            "training": Training(
                trained_at=now or datetime.now(UTC),
                window_from=datetime.fromtimestamp(times[0], UTC),
                window_to=datetime.fromtimestamp(times[-1], UTC),
                samples=len(samples),
                positives=report.positives,
                held_out=len(test_set),
                auc=report.auc,
                auc_rules=report.auc_rules,
                log_loss=report.log_loss,
                calibration_error=report.calibration_error,
                calibration=[
                    {k: row[k] for k in ("decile", "leads", "predicted", "observed")}
                    for row in report.calibration
                ],
                top_bands_share_of_conversions=report.top_bands_share_of_conversions,
            )
        }
    )
    return spec, report


def _report(
    samples: Sequence[Sample],
    train_set: Sequence[Sample],
    test_set: Sequence[Sample],
    predicted: Sequence[float],
    model: CompiledModel,
) -> Report:
    labels = [s.good for s in test_set]
    ruled = [s.rules_score for s in test_set]
    auc_rules = (
        _auc(labels, [r or 0.0 for r in ruled]) if all(r is not None for r in ruled) else None
    )
    report = Report(
        samples=len(samples),
        positives=sum(1 for s in samples if s.good),
        trained_on=len(train_set),
        held_out=len(test_set),
        auc=_auc(labels, predicted),
        auc_rules=auc_rules,
        log_loss=0.0,
    )
    # Calibration by decile of the predicted probability.
    ranked = sorted(zip(predicted, labels, strict=True))
    worst: float | None = None
    for decile in range(10):
        part = ranked[len(ranked) * decile // 10 : len(ranked) * (decile + 1) // 10]
        if not part:
            continue
        mean = sum(p for p, _ in part) / len(part)
        rate = sum(1 for _, good in part if good) / len(part)
        # How far the observed rate strays from a true `mean` by chance alone.
        standard_error = math.sqrt(mean * (1 - mean) / len(part))
        report.calibration.append(
            {
                "decile": decile + 1,
                "leads": len(part),
                "predicted": round(mean, 4),
                "observed": round(rate, 4),
                "standard_error": round(standard_error, 4),
            }
        )
        if len(part) >= 100:
            worst = max(worst or 0.0, abs(mean - rate))
    report.calibration_error = round(worst, 4) if worst is not None else None
    # Conversion by grade band, and the top two bands' share.
    by_band: dict[str, list[int]] = {letter: [0, 0] for letter in ("A", "B", "C", "D")}
    for probability, good in zip(predicted, labels, strict=True):
        band = by_band[model.label(100 * probability)]
        band[0] += 1
        band[1] += int(good)
    report.bands = {
        letter: {"leads": n, "conversions": c, "rate": round(c / n, 4) if n else 0.0}
        for letter, (n, c) in by_band.items()
    }
    conversions = sum(c for _, c in by_band.values())
    top = by_band["A"][1] + by_band["B"][1]
    top_leads = by_band["A"][0] + by_band["B"][0]
    report.top_bands_share_of_conversions = round(top / conversions, 4) if conversions else 0.0
    report.top_bands_share_of_leads = round(top_leads / len(test_set), 4) if test_set else 0.0
    report.features = sorted(
        ({"feature": f.name, "weight": round(f.weight, 4)} for f in model.spec.features),
        key=lambda f: -abs(float(f["weight"])),
    )
    if math.isnan(report.auc):
        raise TooFewOutcomes("the held-out samples cannot be ranked")
    return report
