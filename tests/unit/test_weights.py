"""Proposed points from outcomes (scoring_service/weights.py): pure, on synthetic samples."""

from __future__ import annotations

import math
import random

import pytest

from scoring_service.weights import (
    MIN_SAMPLES,
    Sample,
    TooFewOutcomes,
    comment,
    propose_points,
    with_points,
)

OLD = {"good-signal": 5.0, "noise": 20.0, "bad-signal": 5.0, "never-hit": 7.0}


def samples(n: int, seed: int) -> list[Sample]:
    rnd = random.Random(seed)
    out = []
    for i in range(n):
        hits = {
            "good-signal": rnd.randint(0, 3),
            "noise": rnd.randint(0, 3),
            "bad-signal": rnd.randint(0, 2),
        }
        odds = -0.5 + 1.2 * hits["good-signal"] - 1.0 * hits["bad-signal"]
        out.append(Sample(f"l{i}", hits, rnd.random() < 1 / (1 + math.exp(-odds))))
    return out


def test_the_fit_recovers_the_order_of_the_planted_weights_on_the_old_scale():
    proposal = propose_points(samples(500, 1), OLD, seed=4)
    new = {rule: p for rule, (_, p) in proposal.points.items()}
    assert new["good-signal"] > 0 > new["bad-signal"]
    assert abs(new["noise"]) < new["good-signal"]
    # The same total size as the old points of the rules that were fitted (30), rounded.
    assert abs(sum(abs(p) for p in new.values()) - 30) <= 1.5
    assert proposal.unchanged == ["never-hit"]
    assert proposal.auc_proposed > proposal.auc_old
    assert proposal.trained_on + proposal.held_out == 500


def test_the_same_samples_and_seed_give_the_same_proposal():
    data = samples(300, 2)
    assert propose_points(data, OLD, seed=9) == propose_points(data, OLD, seed=9)


def test_too_few_or_one_sided_outcomes_are_refused():
    with pytest.raises(TooFewOutcomes, match="needs at least"):
        propose_points(samples(MIN_SAMPLES - 1, 3), OLD)
    all_good = [Sample(f"l{i}", {"noise": 1}, True) for i in range(100)]
    with pytest.raises(TooFewOutcomes, match="100 good, 0 bad"):
        propose_points(all_good, OLD)


def test_the_document_and_comment_carry_the_new_points():
    document = {"name": "x", "rules": [{"id": "noise", "points": 20}, {"id": "other", "points": 1}]}
    assert with_points(document, {"noise": 3.0})["rules"] == [
        {"id": "noise", "points": 3.0},
        {"id": "other", "points": 1},
    ]
    assert document["rules"][0]["points"] == 20  # the source is not changed
    proposal = propose_points(samples(300, 5), OLD, seed=1)
    text = comment(proposal, source=4, window="2026-07-01 to 2026-10-01", target="won")
    assert text.startswith("proposed from version 4")
    assert "noise 20->" in text and "held-out AUC" in text
