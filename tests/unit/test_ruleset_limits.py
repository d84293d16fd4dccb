"""Every number in a rule set is finite and within its documented range, refused at
publication with the place and the limit: NaN, infinities and huge durations once stopped
scoring for good when such a version was activated."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from scoring_service.engine import Engine
from scoring_service.rule_set_files import RuleSetInvalid, load_document, starter_ruleset
from scoring_service.simulation import check_runs

STARTER = (Path(__file__).parents[2] / "scoring_service" / "starter_ruleset.yaml").read_text(
    "utf-8"
)


def problems_of(text: str) -> list[dict[str, str]]:
    with pytest.raises(RuleSetInvalid) as caught:
        load_document(text.encode())
    return caught.value.problems


def edited(old: str, new: str) -> str:
    assert old in STARTER, old
    return STARTER.replace(old, new, 1)


@pytest.mark.parametrize(
    ("value", "says"),
    [
        (".nan", "finite"),
        (".inf", "finite"),
        ("-.inf", "finite"),
        ("1.0e+308", "at most 3650d"),
        ("9999999999999d", "at most 3650d"),
        ("3651d", "at most 3650d"),
        ("0", "positive"),
    ],
)
def test_follow_up_deadlines_are_finite_durations_of_ten_years_at_most(value, says):
    [problem] = problems_of(edited("sla: {mql: 24h,", f"sla: {{mql: {value},"))
    assert problem["loc"] == "sla"
    assert "sla.mql" in problem["msg"] and says in problem["msg"]


@pytest.mark.parametrize("value", [".nan", ".inf", "-.inf"])
def test_thresholds_are_finite(value):
    [problem] = problems_of(edited("thresholds: {mql: 50,", f"thresholds: {{mql: {value},"))
    assert problem["loc"] == "thresholds.mql"
    assert "finite" in problem["msg"]


def test_thresholds_stay_within_ten_million():
    [problem] = problems_of(
        edited(
            "thresholds: {mql: 50, sal: 90, sql: 120}", "thresholds: {mql: 50, sal: 90, sql: 1e9}"
        )
    )
    assert problem["loc"] == "thresholds.sql"
    assert "10000000" in problem["msg"]


def test_numbers_in_conditions_and_expressions_are_finite():
    text = edited(
        "rules:\n", "rules:\n  - {id: huge, category: fit, when: {trait: revenue, gte: .inf}}\n"
    )
    [problem] = problems_of(text)
    assert problem["loc"].startswith("rules[0].when")
    text = edited(
        "rules:\n",
        "rules:\n  - {id: odd, category: engagement, when: {properties.amount: .nan}, points: 1}\n",
    )
    [problem] = problems_of(text)
    assert "not a finite number" in problem["msg"]
    [problem] = problems_of(
        edited("qualify: {mql: any,", "qualify: {mql: 'default > " + "9" * 400 + "',")
    )
    assert problem["loc"] == "qualify" or problem["loc"].startswith("document")
    assert "beyond the limit" in problem["msg"]


def test_journey_quiet_times_are_bounded():
    match = re.search(r"quiet: (\S+)", STARTER)
    assert match, "the starter set's journey has quiet times"
    [problem] = problems_of(STARTER.replace(match.group(0), "quiet: 99999d", 1))
    assert "quiet" in problem["loc"] and "at most 3650d" in problem["msg"]


def test_the_starter_set_passes_the_check_every_activation_runs():
    check_runs(Engine(starter_ruleset()), now=1_780_000_000.0)
