"""Conditions: all / any / not around any condition, and conditions on Segment's context."""

from __future__ import annotations

import time

import orjson
import pytest
from pydantic import ValidationError

from schemas.rule_set import RuleSetDocument
from scoring_service.engine import Engine
from scoring_service.intake import Event, event_doc, event_from_doc, parse_event
from scoring_service.rules import compile_ruleset
from scoring_service.simulation import replay_documents
from tests.helpers.factories import at, identify, page, track

NOW = time.time()


def engine_of(*rules: dict) -> Engine:
    document = {"name": "t", "thresholds": {"mql": 1000, "sal": 2000}, "rules": list(rules)}
    return Engine(compile_ruleset(RuleSetDocument.model_validate(document), 1))


def score(engine: Engine, docs: list[dict]) -> tuple[float, float]:
    lead = replay_documents(engine, docs, now=NOW).ws.leads["u"]
    return lead.fit, lead.engagement


DECIDER = {
    "id": "decider",
    "category": "fit",
    "points": 15,
    "when": {
        "all": [
            {"trait": "title", "words_any": ["owner", "founder", "vp"]},
            {"not": {"trait": "title", "words_any": ["product owner"]}},
        ]
    },
}


@pytest.mark.parametrize(
    ("title", "points"),
    [("Owner", 15), ("Product Owner", 0), ("Founder & CEO", 15), ("VP Sales", 15), ("SVP", 0)],
)
def test_all_and_not_around_trait_conditions(title, points):
    engine = engine_of(DECIDER)
    assert score(engine, [identify({"title": title}, user="u", when=at(0))]) == (points, 0)


def test_any_of_a_path_or_an_event_counts_either():
    rule = {
        "id": "buying-intent",
        "category": "engagement",
        "points": 10,
        "when": {"any": [{"path": "/pricing*"}, {"event": "Demo Requested"}]},
    }
    engine = engine_of(rule)
    docs = [
        page("/pricing", user="u", when=at(0)),
        track("Demo Requested", user="u", when=at(0)),
        page("/blog", user="u", when=at(0)),
        track("Email Replied", user="u", when=at(0)),
    ]
    assert score(engine, docs) == (0, 20)


def test_conditions_on_context_and_their_replay_from_history():
    rule = {
        "id": "linkedin-campaign",
        "category": "engagement",
        "points": 5,
        "when": {
            "type": "page",
            "context.campaign.source": {"in": ["linkedin", "LinkedIn Ads"]},
            "not": {"context.page.referrer": {"contains_any": ["careers"]}},
        },
    }
    engine = engine_of(rule)
    campaign = {"campaign": {"source": "LinkedIn"}}
    docs = [
        page("/a", user="u", when=at(0), context=campaign),
        page("/b", user="u", when=at(0), context={**campaign, "page": {"referrer": "x/careers"}}),
        page("/c", user="u", when=at(0), context={"campaign": {"source": "google"}}),
        page("/d", user="u", when=at(0)),
        track("Clicked", user="u", when=at(0), context=campaign),
    ]
    assert score(engine, docs) == (0, 5)
    # Re-scoring reads the stored history: the context a rule can read is kept there.
    events = [parse_event(orjson.dumps(d), now=NOW) for d in docs]
    stored = [event_from_doc(orjson.loads(orjson.dumps(event_doc(e))), "u") for e in events]
    assert all(isinstance(e, Event) for e in stored)
    state = replay_documents(engine, docs, now=NOW).ws.leads["u"]
    engine.rescore(state, stored, None, now=NOW)
    assert state.engagement == 5


def test_only_the_readable_parts_of_context_are_kept():
    doc = page(
        "/a",
        user="u",
        context={"campaign": {"source": "x"}, "userAgent": "Mozilla", "ip": "10.0.0.1"},
    )
    event = parse_event(orjson.dumps(doc), now=NOW)
    assert isinstance(event, Event) and event.context == {"campaign": {"source": "x"}}


@pytest.mark.parametrize(
    ("when", "problem"),
    [
        ({"type": "page", "context.userAgent": "x"}, "context conditions read"),
        ({"any": [{"path": "/a"}, {"trait": "title"}]}, "no operator"),
        ({"not": {}}, "empty condition"),
        ({"any": []}, "at least 1 item"),
        (
            {"all": [{"all": [{"all": [{"all": [{"all": [{"all": [{"type": "page"}]}]}]}]}]}]},
            "deeper",
        ),
    ],
)
def test_malformed_conditions_are_refused_with_a_reason(when, problem):
    rule = {"id": "x", "category": "engagement", "points": 1, "when": when}
    with pytest.raises(ValidationError, match=problem):
        RuleSetDocument.model_validate(
            {"name": "t", "thresholds": {"mql": 1, "sal": 2}, "rules": [rule]}
        )


def test_a_fit_rule_may_not_read_the_event_even_nested():
    rule = {
        "id": "x",
        "category": "fit",
        "points": 1,
        "when": {"all": [{"trait": "title", "equals": "VP"}, {"path": "/pricing"}]},
    }
    with pytest.raises(ValidationError, match="fit rule matches traits only"):
        RuleSetDocument.model_validate(
            {"name": "t", "thresholds": {"mql": 1, "sal": 2}, "rules": [rule]}
        )


def test_an_account_condition_inside_a_combinator_refreshes_fit_when_the_account_changes():
    rule = {
        "id": "icp-industry",
        "category": "fit",
        "points": 10,
        "when": {"any": [{"trait": "account.industry", "in": ["logistics", "transportation"]}]},
    }
    engine = engine_of(rule)
    assert engine.rules.fit_reads_account
