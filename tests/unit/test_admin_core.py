"""Pure pieces of rules administration: re-scoring, diffs, YAML guards, impact counting."""

from __future__ import annotations

import pytest

from schemas.rule_set import RuleSetDocument
from scoring_service.diff import diff_documents
from scoring_service.engine import Engine
from scoring_service.pipeline import Replay
from scoring_service.rule_set_files import RuleSetInvalid, load_document, starter_document
from scoring_service.rules import compile_ruleset
from tests.helpers.factories import NOW, at, identify, page, parsed


def engine_with(version: int, **points: float) -> Engine:
    doc = starter_document().model_dump(mode="json", by_alias=True, exclude_none=True)
    for rule in doc["rules"]:
        if rule["id"] in points:
            rule["points"] = points[rule["id"]]
    return Engine(compile_ruleset(RuleSetDocument.model_validate(doc), version))


def lead_after(engine: Engine, docs: list[dict]) -> tuple[Replay, list]:
    replay = Replay(engine)
    events = [parsed(d) for d in docs]
    replay.feed(events, now=NOW)
    return replay, events


def test_rescore_moves_a_lead_forward_with_reason_rescore():
    docs = [
        identify({"email": "a@x.example", "title": "Owner"}, user="u", when=at(0)),
        page("/pricing", user="u", when=at(0)),
        page("/pricing", user="u", when=at(0)),
    ]
    replay, events = lead_after(engine_with(1), docs)
    lead = replay.ws.leads["u"]
    assert (lead.stage, lead.total) == ("lead", 45)
    effects = engine_with(2, **{"pricing-page": 20}).rescore(lead, events, None, now=NOW)
    assert (lead.stage, lead.total, lead.ruleset_version) == ("mql", 55, 2)
    [transition] = effects.transitions
    assert (transition["reason"], transition["ruleset_version"]) == ("rescore", 2)
    assert transition["transition_id"] == "u:1"


def test_rescore_never_moves_backwards():
    docs = [identify({"email": "a@x.example", "title": "Owner"}, user="u", when=at(0))]
    docs += [page("/pricing", user="u", when=at(0)) for _ in range(3)]
    replay, events = lead_after(engine_with(1), docs)
    lead = replay.ws.leads["u"]
    assert lead.stage == "mql"
    effects = engine_with(2, **{"pricing-page": 1}).rescore(lead, events, None, now=NOW)
    assert (lead.stage, lead.total, effects.transitions) == ("mql", 18, [])


def test_diff_lists_rules_and_settings_field_by_field():
    old = {
        "name": "a",
        "thresholds": {"mql": 50, "sal": 90},
        "rules": [{"id": "x", "points": 1, "when": {"path": "/a"}}, {"id": "gone"}],
    }
    new = {
        "name": "a",
        "thresholds": {"mql": 40, "sal": 90},
        "rules": [{"id": "x", "points": 2, "when": {"path": "/b"}}, {"id": "new"}],
    }
    assert diff_documents(old, new) == {
        "rules": {
            "added": ["new"],
            "removed": ["gone"],
            "changed": [
                {
                    "id": "x",
                    "changes": [
                        {"field": "points", "from": 1, "to": 2},
                        {"field": "when.path", "from": "/a", "to": "/b"},
                    ],
                }
            ],
        },
        "settings": [{"field": "thresholds.mql", "from": 50, "to": 40}],
    }


@pytest.mark.parametrize(
    "text,message",
    [
        ("a: !!python/object/apply:os.system ['x']", "tag"),
        ("a: &anchor 1\nb: *anchor", "anchors"),
        ("a: " + "[" * 50 + "]" * 50, "nested deeper"),
        ("- just\n- a list", "a rule set is an object"),
        ("name: [unclosed", "not valid YAML"),
    ],
)
def test_yaml_guards(text, message):
    with pytest.raises(RuleSetInvalid, match=message):
        load_document(text)


def test_the_impact_report_prints_as_text_in_lifecycle_order():
    from scoring_service.simulation import ImpactReport, Outcome
    from services.runtime.cli import _impact_lines

    report = ImpactReport(active_version=1, candidate_version=2)
    report.add("u-1", Outcome("lead", 40, {"pricing": 20}), Outcome("mql", 55, {"pricing": 35}))
    report.add("u-2", Outcome("sal", 90, {}), Outcome("sal", 90, {}))
    body = report.to_dict()
    # A stored job's result comes back from JSONB with its keys in another order.
    body["stages"] = dict(reversed(list(body["stages"].items())))
    lines = _impact_lines(body, 30)
    assert lines[0] == (
        "version 2 against the active version 1: 2 leads replayed (their last 30 days), "
        "1 would change stage"
    )
    stages = [line.split()[0] for line in lines[2:10]]
    assert stages == [
        "lead",
        "mql",
        "sal",
        "sql",
        "opportunity",
        "customer",
        "recycled",
        "disqualified",
    ]
    assert "  lead                 1          0" in lines
    assert "  u-1: lead 40 -> mql 55 (pricing +15)" in lines
    assert "  rule pricing: 20 -> 35 points in all (+15, 1 leads)" in lines
