"""A model score among a rule set's scores: scored on every event in the engine, usable in
qualification expressions, published in records with an explanation that adds up, the
same for the same events in any order, and refused when it reads what the rule set lacks."""

from __future__ import annotations

import random
import time
from typing import Any

import orjson
import pytest
from pydantic import ValidationError

from bench.workload import generate
from schemas.rule_set import RuleSetDocument
from scoring_service.engine import Engine
from scoring_service.model_score import EXPLAINED_PARTS, CompiledModel, features_of
from scoring_service.rule_set_files import starter_document
from scoring_service.rules import compile_ruleset
from scoring_service.simulation import replay_documents
from scoring_service.state import LeadState
from tests.helpers.factories import identify, page, track

MODEL = {
    "outcome": "won",
    "intercept": -1.5,
    "features": [
        {"name": "rule:webinar", "weight": 0.9, "mean": 0.5, "scale": 1.0},
        {"name": "rule:pricing-page", "weight": 3.5, "mean": 0.4, "scale": 1.0},
        {"name": "rule:careers-page", "weight": -1.2, "mean": 0.2, "scale": 1.0},
        {"name": "fit:decision-maker", "weight": 0.8, "mean": 0.3, "scale": 0.5},
    ],
    "calibration": {"slope": 1.1, "offset": -0.2},
}


def with_model(
    model: dict[str, Any] = MODEL, qualify: dict[str, str] | None = None
) -> dict[str, Any]:
    doc = starter_document().model_dump(mode="json", exclude_none=True)
    doc["scores"]["likelihood"] = {"thresholds": {"mql": 35, "sal": 80}, "model": model}
    if qualify is not None:
        doc["qualify"] = qualify
    return doc


def engine(doc: dict[str, Any]) -> Engine:
    return Engine(compile_ruleset(RuleSetDocument.model_validate(doc), 7))


def test_the_model_score_is_scored_on_every_event_and_explained_to_the_cent() -> None:
    eng = engine(with_model())
    docs = [
        identify({"email": "kim@x.example", "title": "VP Operations"}, user="u-kim"),
        page("/pricing", user="u-kim"),
        track("Webinar Attended", user="u-kim"),
    ]
    replay = replay_documents(eng, docs, now=time.time())
    kim = replay.ws.leads["u-kim"]
    expected = CompiledModel(
        RuleSetDocument.model_validate(with_model()).scores["likelihood"].model
    )  # type: ignore[arg-type]
    points = expected.score(features_of(kim, eng.rules)).points
    assert eng.totals(kim)["likelihood"] == pytest.approx(points, abs=1e-9)
    entry = eng.score_entries(kim)["likelihood"]
    # Published as fit and engagement rounded to the cent each, like every score.
    assert entry["total"] == pytest.approx(points, abs=0.011)
    assert entry["label"] in ("A", "B", "C", "D")
    score, signals = eng.explain(kim, score="likelihood")
    assert sum(s["contribution"] for s in signals) == pytest.approx(score["total"], abs=0.005)
    assert {s["rule_id"] for s in signals} >= {"model:base", "rule:pricing-page"}


def test_a_qualification_expression_reads_the_model_score() -> None:
    # An address (mql requires one) and one pricing visit: far below the default score's
    # mql, enough for the model's.
    docs = [
        identify({"email": "pat@x.example"}, user="u-p", message_id="p-0"),
        page("/pricing", user="u-p", message_id="p-1"),
    ]
    rules_only = {"mql": "default", "sal": "default", "sql": "default"}
    plain = replay_documents(engine(with_model(qualify=rules_only)), docs, now=time.time())
    assert plain.ws.leads["u-p"].stage == "lead"
    qualified = replay_documents(
        engine(with_model(qualify={"mql": "likelihood >= 35 or default", "sal": "default"})),
        docs,
        now=time.time(),
    )
    lead = qualified.ws.leads["u-p"]
    assert lead.stage == "mql"
    [move] = qualified.transitions
    assert move["qualified_by"] == ["likelihood"]
    assert move["scores"]["likelihood"]["total"] >= 35


def test_a_replay_gives_the_same_model_score_and_order_changes_only_what_rules_change() -> None:
    docs = [d for d in generate(events=4000, leads=300, seed=5) if not isinstance(d, bytes)]
    shuffled = docs[:]
    random.Random(1).shuffle(shuffled)
    now = time.time()
    engines = [engine(with_model()) for _ in range(3)]
    first, again, reordered = (
        replay_documents(eng, events, now=now)
        for eng, events in zip(engines, (docs, docs, shuffled), strict=True)
    )
    read = [f["name"] for f in MODEL["features"]]
    same_inputs = 0
    for lead_id, state in first.ws.leads.items():
        ours = engines[0].totals(state)["likelihood"]
        # A replay gives the same probability, to the last bit.
        assert engines[1].totals(again.ws.leads[lead_id])["likelihood"] == ours
        # In another order, the model moves only where what it reads moved: the rules'
        # limits and the last traits sent depend on the order events arrive in.
        other = reordered.ws.leads[lead_id]
        mine = features_of(state, engines[0].rules)
        theirs = features_of(other, engines[2].rules)
        if all(abs(mine.get(n, 0.0) - theirs.get(n, 0.0)) < 1e-9 for n in read):
            same_inputs += 1
            assert engines[2].totals(other)["likelihood"] == pytest.approx(ours, abs=1e-9)
    assert same_inputs > len(first.ws.leads) * 0.6


def test_a_model_reading_what_the_rule_set_lacks_is_refused_where_it_is() -> None:
    unknown = {**MODEL, "features": [{"name": "rule:no-such-rule", "weight": 1.0}]}
    with pytest.raises(ValidationError) as refused:
        RuleSetDocument.model_validate(with_model(unknown))
    assert (
        "scores.likelihood.model.features[0] (rule:no-such-rule): the rule set has no "
        "engagement rule 'no-such-rule'" in str(refused.value)
    )
    counted = with_model()
    counted["rules"][0] = {**counted["rules"][0], "scores": ["likelihood"]}
    with pytest.raises(ValidationError, match="a model score: its value is learned"):
        RuleSetDocument.model_validate(counted)
    graded = with_model()
    graded["scores"]["likelihood"]["grades"] = {"fit": [30, 20, 10], "engagement": [20, 10]}
    with pytest.raises(ValidationError, match=r"graded by model\.bands"):
        RuleSetDocument.model_validate(graded)
    accountless = with_model({**MODEL, "features": [{"name": "account:score", "weight": 1.0}]})
    accountless.pop("accounts")
    with pytest.raises(ValidationError) as refused:
        RuleSetDocument.model_validate(accountless)
    assert (
        "scores.likelihood.model.features[0] (account:score): the rule set scores no accounts"
        in str(refused.value)
    )
    nan = orjson.loads(orjson.dumps(with_model()))
    nan["scores"]["likelihood"]["model"]["intercept"] = float("nan")
    with pytest.raises(ValidationError, match="finite"):
        RuleSetDocument.model_validate(nan)


# A model reading a feature of every kind.
EVERY_KIND = {
    **MODEL,
    "features": [
        *MODEL["features"],  # type: ignore[list-item]
        {"name": "journey:consideration", "weight": 0.4, "mean": 0.2},
        {"name": "first_touch:direct", "weight": -0.3, "mean": 0.5},
        {"name": "last_touch:email", "weight": 0.2, "mean": 0.1},
        {"name": "tenure_days", "weight": 0.05, "mean": 4.0, "scale": 3.0},
        {"name": "account:coverage", "weight": 0.02, "mean": 10.0, "scale": 5.0},
        {"name": "account:score", "weight": 0.01, "mean": 40.0, "scale": 20.0},
    ],
}


def workload() -> list[dict[str, Any]]:
    """Events of 200 leads, with merges, recycles and late events among them."""
    return [
        d
        for d in generate(events=3000, leads=200, seed=9, anonymous_share=0.3)
        if not isinstance(d, bytes)
    ]


def test_a_lead_is_explained_from_its_state_as_its_features_say() -> None:
    """The explanation reads the lead's features where the lead keeps them; it must say
    what the model says of the features named one by one (`features_of`, `score`): the same
    points to the bit, the largest parts with their values, and the rest summed."""
    eng = engine(with_model(EVERY_KIND))
    replay = replay_documents(eng, workload(), now=time.time())
    [model] = [s.model for s in eng.rules.book.scores if s.model is not None]
    later = time.time()
    explained = 0
    for state in replay.ws.leads.values():
        for at in (None, later):
            features = features_of(state, eng.rules, at)
            fit, engagement, signals = model.explain_lead(state, eng.rules, at)
            assert (fit, engagement) == model.split(features)
            truth = model.score(features)
            largest = sorted(truth.parts, key=lambda p: (-abs(p.log_odds), p.feature))
            shown = largest[:EXPLAINED_PARTS]
            base, *parts, rest = signals
            assert base["contribution"] == pytest.approx(truth.base_points, abs=1e-9)
            assert [p["rule_id"] for p in parts] == [p.feature for p in shown]
            assert [p["description"] for p in parts] == [
                f"{p.feature} = {p.value:.4g}" for p in shown
            ]
            assert [p["contribution"] for p in parts] == pytest.approx(
                [p.points for p in shown], abs=1e-9
            )
            assert rest["contribution"] == pytest.approx(
                sum(p.points for p in largest[EXPLAINED_PARTS:]), abs=1e-9
            )
            assert rest["description"] == f"{len(largest) - EXPLAINED_PARTS} other features"
            assert sum(s["contribution"] for s in signals) == pytest.approx(truth.points)
            explained += len(features)
    assert explained  # leads with features of their own were explained


def test_the_hot_path_reads_a_lead_as_the_explanation_does() -> None:
    """The engine keeps the model's rule part as a running sum; it must equal the features'
    sum for every lead, also after merges, recycles and late events (the workload has
    them)."""
    eng = engine(with_model(EVERY_KIND))
    replay = replay_documents(eng, workload(), now=time.time())
    [model] = [s.model for s in eng.rules.book.scores if s.model is not None]
    later = time.time()
    # Members read their account as their latest event left it, kept when stored.
    members = [s for s in replay.ws.leads.values() if s.account_score]
    assert members and any(s.account_coverage for s in members)
    for state in members:
        stored = LeadState(lead_id=state.lead_id)
        stored.load_doc(orjson.loads(orjson.dumps(state.to_doc())))
        assert (stored.account_coverage, stored.account_score) == (
            state.account_coverage,
            state.account_score,
        )
    for state in replay.ws.leads.values():
        for at in (None, later):
            # The rules' part kept up hit by hit, then derived afresh from the signals (a
            # lead loaded from the database): both as the features say.
            slow = model.split(features_of(state, eng.rules, at))
            assert eng.score_parts(state, at)["likelihood"] == pytest.approx(slow, abs=1e-9)
            state.model_kept = False
            assert eng.score_parts(state, at)["likelihood"] == pytest.approx(slow, abs=1e-9)
