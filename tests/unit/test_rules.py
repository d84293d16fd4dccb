"""Rule-set validation and the matchers it compiles to."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

from schemas.rule_set import RuleSetDocument
from scoring_service.rule_set_files import RuleSetInvalid, validate_data
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


def test_a_duplicate_id_is_reported_with_every_other_problem():
    good = {"id": "x", "category": "engagement", "when": {"type": "page"}, "points": 1}
    bad = {"id": "y", "category": "engagement", "when": {"path": "*" * 20}, "points": 1}
    doc = doc_with(good)
    doc["rules"] += [bad, good]
    with pytest.raises(RuleSetInvalid) as caught:
        validate_data(doc)
    places = {p["loc"]: p["msg"] for p in caught.value.problems}
    assert "rules[1].when.path" in places
    assert places["rules[2].id"] == "duplicate rule id 'x' (first used at rules[0])"
    assert len(caught.value.problems) == 2


def test_duplicate_ids_are_refused():
    rule = {"id": "x", "category": "engagement", "when": {"type": "page"}, "points": 1}
    doc = doc_with(rule)
    doc["rules"].append(rule)
    with pytest.raises(ValidationError, match="duplicate rule id"):
        RuleSetDocument.model_validate(doc)


@pytest.mark.parametrize(
    ("words_any", "title", "matches"),
    [
        (["intern"], "International Sales Director", False),
        (["intern"], "Marketing Intern", True),
        (["cto"], "Doctor", False),
        (["cto"], "CTO & co-founder", True),
        (["vice president"], "Vice-President, Sales", True),
        (["vice president"], "President", False),
        (["head of"], "Head of Logistics", True),
        (["head of"], "Headhunter", False),
        (["directeur"], "Directeur Général", True),
        (["general"], "Directeur Général", True),  # accents ignored
        (["vp"], "SVP Operations", False),
        (["vp"], "VP", True),
    ],
)
def test_words_any_matches_whole_words_and_phrases(words_any, title, matches):
    from schemas.rule_set import Operators
    from scoring_service.rules import compile_operators

    assert compile_operators(Operators(words_any=words_any))(title) is matches


def test_words_any_needs_a_word():
    with pytest.raises(ValidationError, match="no letter or digit"):
        RuleSetDocument.model_validate(
            doc_with(
                {"id": "x", "category": "fit", "when": {"trait": "title", "words_any": ["--"]}}
            )
        )


@given(
    st.lists(st.sampled_from(["vp", "head", "of", "sales", "Intern", "é", "x"]), max_size=8),
    st.lists(st.sampled_from(["vp", "head", "of", "sales", "intern", "e"]), min_size=1, max_size=3),
    st.sampled_from([" ", "-", ", ", " / "]),
)
def test_words_any_is_a_run_of_whole_words(title_words, phrase_words, separator):
    """Against the plain definition: the phrase's words appear consecutively in the title's."""
    from schemas.rule_set import Operators
    from scoring_service.rules import compile_operators

    def fold(word: str) -> str:
        return word.casefold().replace("é", "e")

    title = [fold(w) for w in title_words]
    phrase = [fold(w) for w in phrase_words]
    expected = any(
        title[i : i + len(phrase)] == phrase for i in range(len(title) - len(phrase) + 1)
    )
    test = compile_operators(Operators(words_any=[" ".join(phrase_words)]))
    assert test(separator.join(title_words)) is expected


def test_a_rule_whose_points_were_deleted_is_refused_and_a_trigger_needs_none():
    lost = {"id": "x", "category": "engagement", "when": {"type": "page"}}
    with pytest.raises(ValidationError, match="a rule needs 'points'"):
        RuleSetDocument.model_validate(doc_with(lost))
    for acting in ({"points": 0}, {"promote_to": "sal"}, {"disqualify": True}):
        RuleSetDocument.model_validate(doc_with({**lost, **acting}))
