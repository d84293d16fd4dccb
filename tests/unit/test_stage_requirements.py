"""Per-stage requirements, exclusions that hold a lead without disqualifying it, and the SQL
threshold, as journeys through the pure pipeline."""

from __future__ import annotations

import time

import pytest
from pydantic import ValidationError

from schemas.rule_set import RuleSetDocument
from scoring_service.engine import Engine
from scoring_service.rules import compile_ruleset
from scoring_service.simulation import replay_documents
from tests.helpers.factories import at, identify, page, track

NOW = time.time()
RULES = [
    {"id": "pricing", "category": "engagement", "points": 30, "when": {"path": "/pricing*"}},
    {
        "id": "demo",
        "category": "engagement",
        "points": 10,
        "promote_to": "sal",
        "when": {"event": "Demo Requested"},
    },
]
PERSONAL = {
    "id": "personal-email",
    "when": {"trait": "email", "ends_with_any": ["@gmail.com", "@hotmail.com"]},
}


def engine_of(**settings) -> Engine:
    document = {
        "name": "t",
        "thresholds": {"mql": 50, "sal": 100, "sql": 150},
        "notify_on": ["mql", "sal", "sql"],
        "rules": RULES,
        **settings,
    }
    return Engine(compile_ruleset(RuleSetDocument.model_validate(document), 1))


def journey(engine: Engine, docs: list[dict]):
    replay = replay_documents(engine, docs, now=NOW)
    return replay, replay.ws.leads["u"]


def test_an_excluded_lead_asking_for_a_demo_stays_out_of_sal_and_sales_is_not_told():
    engine = engine_of(excluded_when=[PERSONAL])
    replay, lead = journey(
        engine,
        [
            identify({"email": "kid@gmail.com", "title": "Student"}, user="u", when=at(0)),
            track("Demo Requested", user="u", when=at(0, hours=1)),
            *[page("/pricing", user="u", when=at(0, hours=2)) for _ in range(3)],
        ],
    )
    assert (lead.stage, lead.held) == ("lead", "excluded: personal-email")
    assert lead.total == 100  # scoring goes on; only the stage is held
    assert replay.transitions == [] and replay.notifications == []
    # A work address later: the lead moves on, the held trigger with it.
    replay.feed(
        [_parsed(identify({"email": "kid@acme.example"}, user="u", when=at(0, hours=3)))], now=NOW
    )
    assert [(t["to_stage"], t["reason"]) for t in replay.transitions] == [("sal", "trigger")]
    assert lead.held is None


def test_sal_requirements_cap_a_trigger_at_mql_until_the_trait_arrives():
    engine = engine_of(requires={"sal": ["title"]})
    replay, lead = journey(
        engine,
        [
            identify({"email": "a@acme.example"}, user="u", when=at(0)),
            *[page("/pricing", user="u", when=at(0)) for _ in range(2)],
            track("Demo Requested", user="u", when=at(0, hours=1)),
        ],
    )
    assert [(t["to_stage"], t["reason"]) for t in replay.transitions] == [("mql", "threshold")]
    assert (lead.stage, lead.held) == ("mql", "sal requires title")
    replay.feed(
        [_parsed(identify({"title": "Head of Logistics"}, user="u", when=at(0, hours=2)))], now=NOW
    )
    assert [t["to_stage"] for t in replay.transitions] == ["mql", "sal"]
    assert (lead.stage, lead.held) == ("sal", None)


def test_conditions_as_requirements_and_mql_requires_still_work():
    engine = engine_of(
        mql_requires=["email"],
        requires={"mql": [{"trait": "company.employees", "between": [5, 500]}]},
    )
    _, small = journey(
        engine,
        [
            identify({"email": "a@x.example", "company": {"employees": 40}}, user="u", when=at(0)),
            *[page("/pricing", user="u", when=at(0)) for _ in range(2)],
        ],
    )
    assert small.stage == "mql"
    _, large = journey(
        engine,
        [
            identify(
                {"email": "a@x.example", "company": {"employees": 9000}}, user="u", when=at(0)
            ),
            *[page("/pricing", user="u", when=at(0)) for _ in range(2)],
        ],
    )
    assert (large.stage, large.held) == ("lead", "mql requires condition 2")


def test_a_lead_at_the_sql_threshold_becomes_sql_and_sales_hears_with_the_profile():
    engine = engine_of()
    replay, lead = journey(
        engine,
        [
            identify(
                {"email": "dana@trucking.example", "title": "Owner", "company": "Trucking Co"},
                user="u",
                when=at(0),
            ),
            *[page("/pricing", user="u", when=at(0, seconds=i)) for i in range(5)],
        ],
    )
    assert [t["to_stage"] for t in replay.transitions] == ["mql", "sal", "sql"]
    assert lead.stage == "sql"
    note = replay.notifications[-1]
    assert (note["stage"], note["priority"]) == ("sql", "hot")
    assert note["profile"] == {
        "email": "dana@trucking.example",
        "title": "Owner",
        "company": "Trucking Co",
    }


@pytest.mark.parametrize(
    ("settings", "problem"),
    [
        ({"thresholds": {"mql": 50, "sal": 100, "sql": 90}}, "thresholds.sql must be >="),
        ({"excluded_when": [{"id": "x", "when": {"path": "/careers"}}]}, "traits only"),
        ({"requires": {"sal": [{"type": "page"}]}}, "traits only"),
        ({"requires": {"opportunity": ["title"]}}, "Input should be 'mql', 'sal' or 'sql'"),
        ({"requires": {"sal": [""]}}, "dotted path"),
    ],
)
def test_malformed_requirements_and_exclusions_are_refused(settings, problem):
    document = {"name": "t", "thresholds": {"mql": 50, "sal": 100}, "rules": RULES, **settings}
    with pytest.raises(ValidationError, match=problem):
        RuleSetDocument.model_validate(document)


def _parsed(doc: dict):
    import orjson

    from scoring_service.intake import parse_event

    return parse_event(orjson.dumps(doc), now=NOW)
