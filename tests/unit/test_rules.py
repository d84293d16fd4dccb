"""Rule-set validation and the matchers it compiles to."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from schemas.ruleset import RuleSetDocument
from scoring_service.rules import Glob
from scoring_service.ruleset_files import RuleSetInvalid, validate_data


@pytest.mark.parametrize(
    "pattern,text,expected",
    [
        ("/pricing*", "/pricing", True),
        ("/pricing*", "/pricing/enterprise", True),
        ("/pricing*", "/about/pricing", False),
        ("*/docs/*/api", "/en/docs/v2/api", True),
        ("*/docs/*/api", "/en/docs/api", False),
        ("/a*a*a*a*a*b", "/" + "a" * 5000, False),
        ("/exact", "/exact", True),
        ("/exact", "/exactly", False),
    ],
)
def test_glob(pattern, text, expected):
    assert Glob(pattern).matches(text) is expected


def doc_with(rule: dict) -> dict:
    return {"name": "t", "thresholds": {"mql": 1, "sal": 2}, "rules": [rule]}


@pytest.mark.parametrize(
    "rule,problem",
    [
        ({"id": "x", "category": "engagement", "when": {}}, "empty condition"),
        (
            {"id": "x", "category": "engagement", "when": {"type": "page", "regex": ".*"}},
            "unknown condition",
        ),
        ({"id": "x", "category": "fit", "when": {"trait": "title"}}, "no operator"),
        (
            {"id": "x", "category": "fit", "when": {"type": "page", "trait": "t", "exists": True}},
            "fit rule",
        ),
        (
            {
                "id": "x",
                "category": "engagement",
                "when": {"type": "page"},
                "promote_to": "customer",
            },
            "promote_to",
        ),
        ({"id": "x", "category": "engagement", "when": {"path": "*" * 20}}, "wildcards"),
    ],
)
def test_invalid_rules_are_refused_with_a_reason(rule, problem):
    with pytest.raises(ValidationError, match=problem):
        RuleSetDocument.model_validate(doc_with(rule))


def test_a_duplicate_id_is_reported_with_every_other_problem():
    good = {"id": "x", "category": "engagement", "when": {"type": "page"}}
    bad = {"id": "y", "category": "engagement", "when": {"path": "*" * 20}}
    doc = doc_with(good)
    doc["rules"] += [bad, good]
    with pytest.raises(RuleSetInvalid) as caught:
        validate_data(doc)
    places = {p["loc"]: p["msg"] for p in caught.value.problems}
    assert "rules[1].when.path" in places
    assert places["rules[2].id"] == "duplicate rule id 'x' (first used at rules[0])"
    assert len(caught.value.problems) == 2


def test_duplicate_ids_are_refused():
    rule = {"id": "x", "category": "engagement", "when": {"type": "page"}}
    doc = doc_with(rule)
    doc["rules"].append(rule)
    with pytest.raises(ValidationError, match="duplicate rule id"):
        RuleSetDocument.model_validate(doc)
