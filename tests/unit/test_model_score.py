"""A learned score: its parts add up exactly, a replay gives the same features, a model
that cannot run is refused with located errors, and training recovers what was planted."""

from __future__ import annotations

import math
import random
import time
from pathlib import Path

import orjson
import pytest
from pydantic import ValidationError

from schemas.model_score import MAX_FEATURES, ModelSpec
from scoring_service.engine import Engine
from scoring_service.model_score import CompiledModel, features_of
from scoring_service.rule_set_files import starter_ruleset
from scoring_service.simulation import replay_documents
from scoring_service.training import Sample, TooFewOutcomes, train

ROOT = Path(__file__).resolve().parents[2]


def spec(features: list[tuple[str, float, float, float]], **kw: object) -> ModelSpec:
    return ModelSpec.model_validate(
        {
            "intercept": -1.3,
            "features": [
                {"name": n, "weight": w, "mean": m, "scale": s} for n, w, m, s in features
            ],
            **kw,
        }
    )


def test_the_parts_add_up_to_the_logit_and_to_the_points() -> None:
    rnd = random.Random(7)
    names = [f"rule:r{n}" for n in range(40)] + ["fit:icp", "tenure_days"]
    model = CompiledModel(
        spec(
            [(n, rnd.uniform(-2, 2), rnd.uniform(-1, 3), rnd.uniform(0.1, 5)) for n in names],
            calibration={"slope": 0.8, "offset": 0.3},
        )
    )
    for _ in range(200):
        values = {n: rnd.choice([0.0, rnd.uniform(0, 20)]) for n in names}
        result = model.score(values)
        assert abs(model.intercept + sum(p.log_odds for p in result.parts) - result.logit) < 1e-9
        assert abs(result.base_points + sum(p.points for p in result.parts) - result.points) < 1e-9
        z = 0.8 * result.logit + 0.3
        assert abs(result.probability - 1 / (1 + math.exp(-z))) < 1e-12
        up, down = result.reasons()
        assert all(p.log_odds > 0 for p in up) and all(p.log_odds < 0 for p in down)


def test_a_model_that_cannot_run_is_refused_with_where() -> None:
    cases = {
        "nan weight": [("rule:a", math.nan, 0, 1)],
        "infinite weight": [("rule:a", math.inf, 0, 1)],
        "unknown kind of feature": [("colour:red", 1, 0, 1)],
        "zero scale": [("rule:a", 1, 0, 0)],
        "listed twice": [("rule:a", 1, 0, 1), ("rule:a", 2, 0, 1)],
    }
    messages = {}
    for name, features in cases.items():
        with pytest.raises(ValidationError) as refused:
            spec(features)
        messages[name] = str(refused.value)
    assert "features.0.weight" in messages["nan weight"]
    assert "features.0.weight" in messages["infinite weight"]
    assert "features.0.name" in messages["unknown kind of feature"]
    assert "features.0.scale" in messages["zero scale"]
    assert "features[1] (rule:a): listed twice" in messages["listed twice"]
    with pytest.raises(ValidationError) as too_many:
        spec([(f"rule:r{n}", 1, 0, 1) for n in range(MAX_FEATURES + 1)])
    assert f"at most {MAX_FEATURES} items" in str(too_many.value)
    model = spec([("rule:webinar", 1, 0, 1), ("fit:nobody", 1, 0, 1), ("journey:moon", 1, 0, 1)])
    assert model.problems_against(rules={"webinar"}, fit_rules=set(), phases={"awareness"}) == [
        "features[1] (fit:nobody): the rule set has no fit rule 'nobody'",
        "features[2] (journey:moon): the buyer journey has no phase 'moon'",
    ]


def test_a_replay_in_another_order_gives_the_same_features() -> None:
    docs = [
        orjson.loads(line)
        for line in (ROOT / "examples" / "journey.jsonl").read_bytes().splitlines()
        if line.strip()
    ]
    now = time.time()
    forward = replay_documents(Engine(starter_ruleset()), docs, now=now)
    backward = replay_documents(Engine(starter_ruleset()), docs[::-1], now=now)
    rules = forward.engine.rules
    dana = features_of(forward.ws.leads["u-42"], rules)
    again = features_of(backward.ws.leads["u-42"], rules)
    assert any(name.startswith("rule:") for name in dana)
    assert any(name.startswith("fit:") for name in dana)
    engagement = {k: v for k, v in dana.items() if k.startswith(("rule:", "fit:"))}
    assert engagement == pytest.approx({k: again[k] for k in engagement}, abs=1e-9)


def planted(n: int, seed: int) -> list[Sample]:
    """Leads whose outcome depends on two features by known weights, and one that is noise."""
    rnd = random.Random(seed)
    samples = []
    for i in range(n):
        webinar = float(rnd.randint(0, 3))
        careers = float(rnd.random() < 0.3)
        noise = rnd.random() * 5
        logit = -1.0 + 0.9 * webinar - 1.5 * careers
        good = rnd.random() < 1 / (1 + math.exp(-logit))
        features = {"rule:webinar": webinar, "rule:careers": careers, "rule:noise": noise}
        samples.append(Sample(f"u-{i}", 1_700_000_000 + i * 60, features, good, rules_score=noise))
    return samples


def test_training_recovers_the_planted_directions_and_is_calibrated() -> None:
    # Deciles of 1,000 held-out leads: a decile's observed rate is then within about 0.03
    # of the truth by chance alone, so the 0.05 bound tests the calibration.
    model, report = train(planted(50_000, seed=3))
    weights = {f.name: f.weight for f in model.features}
    assert weights["rule:webinar"] > 0.5 and weights["rule:careers"] < -0.3
    assert abs(weights["rule:noise"]) < 0.1
    assert report.held_out == 10_000 and report.trained_on == 40_000
    assert report.auc > 0.7 and report.auc_rules is not None and report.auc > report.auc_rules
    assert report.calibration_error is not None and report.calibration_error < 0.05
    assert model.training is not None and model.training.auc == report.auc
    assert sum(b["leads"] for b in report.bands.values()) == report.held_out


def test_training_refuses_too_few_outcomes_in_words() -> None:
    few = [s for s in planted(400, seed=4)]
    good = [s for s in few if s.good][:39]
    bad = [s for s in few if not s.good][:200]
    with pytest.raises(TooFewOutcomes, match="39 good and 200 bad outcomes; at least 40"):
        train(good + bad)
