"""Rule-set validation and the matchers it compiles to."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from schemas.ruleset import RuleSetDocument
from scoring_service.rules import Glob


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


def test_duplicate_ids_are_refused():
    rule = {"id": "x", "category": "engagement", "when": {"type": "page"}}
    doc = doc_with(rule)
    doc["rules"].append(rule)
    with pytest.raises(ValidationError, match="duplicate rule id"):
        RuleSetDocument.model_validate(doc)
