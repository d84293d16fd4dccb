"""The console's and the HTTP edge's pure parts: CSRF, HTTP Basic, Host and Origin checks,
problem lines in YAML, the side-by-side diff, charts."""

from __future__ import annotations

import base64
import re
from pathlib import Path

import pytest
import yaml

from scoring_service.diff import around_changes, side_by_side
from scoring_service.rule_set_files import RuleSetInvalid, load_document, problem_lines
from services.auth import AuthError, authenticate, hash_token, parse_tokens
from services.console.charts import bar_chart, grouped_bar_chart, line_chart
from services.console.session import Forbidden, Visitor, check_csrf
from services.http.guards import AllowedHosts, cross_origin_refusal

TOKENS = parse_tokens(
    f"ann:admin:{hash_token('admin-secret')},vic:viewer:{hash_token('viewer-secret')},"
    f"sdk:ingest:{hash_token('write-key')}"
)


def visitor(csrf: str, *, new_cookie: bool = False) -> Visitor:
    return Visitor(None, None, csrf, False, new_cookie)


def test_csrf_tokens_must_match_the_visitors():
    token = "a-random-csrf-token-of-the-session"
    check_csrf(visitor(token), token)
    for offered in (None, "", token[:-1] + "x"):
        with pytest.raises(Forbidden):
            check_csrf(visitor(token), offered)
    # A CSRF cookie made for this very response cannot vouch for a form sent before it.
    with pytest.raises(Forbidden):
        check_csrf(visitor(token, new_cookie=True), token)


def basic(user: str, password: str = "") -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


def test_http_basic_carries_ingest_tokens_only_and_bearer_carries_every_role():
    assert authenticate(TOKENS, basic("write-key"), "10.0.0.8").role == "ingest"
    assert authenticate(TOKENS, "Bearer write-key", "10.0.0.8").role == "ingest"
    assert authenticate(TOKENS, "Bearer admin-secret", "10.0.0.8").role == "admin"
    with pytest.raises(AuthError, match="Basic is for ingest tokens"):
        authenticate(TOKENS, basic("admin-secret"), "10.0.0.8")
    for refused in (basic("guess"), "Basic !!!", "Basic " + "A" * 2000, basic(""), "Digest x"):
        with pytest.raises(AuthError) as caught:
            authenticate(TOKENS, refused, "10.0.0.8")
        assert caught.value.status == 401
    # No tokens configured: loopback is trusted whatever it sends, others are refused.
    assert authenticate({}, basic("anything"), "127.0.0.1").role == "local"
    with pytest.raises(AuthError, match="loopback only"):
        authenticate({}, basic("anything"), "10.0.0.8")


def test_allowed_hosts_are_loopback_the_listening_address_ip_literals_and_the_configured():
    default = AllowedHosts("", "127.0.0.1")
    for host in ("localhost", "LOCALHOST.:8000", "127.0.0.1:8000", "[::1]:8000", "10.2.3.4"):
        assert default.admits(host), host
    for host in (
        "attacker.example:8000",
        "localhost.attacker.example",
        "",
        None,
        "[::1",
        "localhost:80:80",
        "localhost:x",
        "a" * 400,
    ):
        assert not default.admits(host), host
    configured = AllowedHosts("leadscore.internal, .example.com", "0.0.0.0")
    assert configured.admits("leadscore.internal:8000") and configured.admits("0.0.0.0")
    assert configured.admits("crm.example.com") and not configured.admits("example.org")
    assert AllowedHosts("*", "127.0.0.1").admits("anything.example")


def test_a_write_from_another_origin_is_told_apart_from_the_services_own_pages():
    def refusal(**headers: str) -> str | None:
        return cross_origin_refusal(
            {k.replace("_", "-").encode(): v.encode() for k, v in headers.items()}
        )

    assert refusal(host="127.0.0.1:8000") is None  # a program: no Origin
    assert refusal(host="127.0.0.1:8000", origin="http://127.0.0.1:8000") is None
    assert refusal(host="localhost", origin="https://localhost:443") is None
    assert refusal(host="127.0.0.1:8000", sec_fetch_site="same-origin") is None
    assert refusal(host="127.0.0.1:8000", sec_fetch_site="none") is None
    assert "evil.example" in (refusal(host="127.0.0.1:8000", origin="http://evil.example") or "")
    # Another port of the same machine is another origin (and the same site).
    assert refusal(host="127.0.0.1:8000", origin="http://127.0.0.1:9000")
    assert refusal(host="127.0.0.1:8000", origin="null")
    assert refusal(host="127.0.0.1:8000", sec_fetch_site="same-site")
    assert refusal(host="127.0.0.1:8000", sec_fetch_site="cross-site")


def problems_of(text: str) -> list[dict[str, object]]:
    with pytest.raises(RuleSetInvalid) as caught:
        load_document(text)
    return problem_lines(text, caught.value.problems)


STARTER = (Path(__file__).parents[2] / "scoring_service" / "starter_ruleset.yaml").read_text(
    "utf-8"
)


def test_each_problem_points_at_the_line_it_is_on():
    lines = STARTER.splitlines()
    target = next(n for n, line in enumerate(lines) if '"/blog*"}, points: 1,' in line)
    lines[target] = lines[target].replace("points: 1,", "points: many,")
    text = "\n".join(lines)
    [problem] = problems_of(text)
    assert problem["loc"].endswith(".points") and problem["line"] == target + 1


def test_a_problem_in_a_missing_field_points_at_its_parent():
    text = "name: x\nthresholds: {mql: 10, sal: 20}\nrules:\n  - id: a\n    category: engagement\n"
    found = problems_of(text)
    assert found and all(p["line"] == 4 for p in found if str(p["loc"]).startswith("rules[0]"))


def test_top_level_problems_point_at_their_key_or_at_nothing():
    found = {p["loc"]: p["line"] for p in problems_of("\ufffd\ufffd name: x\nrules: 3\n")}
    assert found["rules"] == 2 and found["thresholds"] is None and found["name"] is None


def test_a_syntax_error_points_at_its_line_and_aliases_are_not_walked():
    [problem] = problems_of("name: x\nrules:\n  - id: [unclosed\n")
    assert problem["line"] in (3, 4)
    bomb = "a: &a [1, 2]\nb: [*a, *a]\n"
    [problem] = problems_of(bomb)
    assert problem["line"] is None and "anchors" in str(problem["msg"])


def test_side_by_side_pairs_changed_lines_and_leaves_gaps_for_the_rest():
    rows = side_by_side("a\nb\nc\nx\n", "a\nB\nc\n")
    assert rows == [
        ("same", 1, "a", 1, "a"),
        ("changed", 2, "b", 2, "B"),
        ("same", 3, "c", 3, "c"),
        ("removed", 4, "x", None, None),
    ]
    assert side_by_side("", "new\n") == [("added", None, None, 1, "new")]


def test_charts_escape_labels_and_describe_their_numbers():
    svg = str(bar_chart("c", "Score <of> lead", [("<script>", 12.5), ("careers", -20)]))
    assert "<script>" not in svg and "&lt;script&gt;" in svg
    assert "12.50" in svg and "-20" in svg
    assert re.search(r'<desc id="c-d">[^<]*careers: -20', svg)
    negative = re.search(r'class="bar neg" x="([0-9.]+)"', svg)
    positive = re.search(r'class="bar pos" x="([0-9.]+)"', svg)
    assert negative and positive and float(negative.group(1)) < float(positive.group(1))
    grouped = str(
        grouped_bar_chart("g", "Stages", ["lead", "mql"], [("v1", [3, 1]), ("v2", [2, 2])])
    )
    assert grouped.count('class="bar s0"') == 3 and grouped.count('class="bar s1"') == 3
    line = str(
        line_chart("l", "Trajectory", [("#1", 0), ("#2", 15), ("#3", 45)], marks=[(2, "mql")])
    )
    assert line.count("<circle") == 3 and 'class="mark"' in line and ">mql</text>" in line


def test_the_starter_rules_round_trip_through_the_editors_yaml():
    from services.console.formats import as_yaml as _yaml

    document = load_document(STARTER).model_dump(mode="json")
    assert load_document(_yaml(document)).model_dump(mode="json") == document
    assert "null" not in _yaml(document)
    assert yaml.safe_load(_yaml(document))["name"] == document["name"]


def test_around_changes_keeps_the_context_and_counts_the_rest():
    old = "\n".join(f"line {n}" for n in range(1, 21))
    new = old.replace("line 10", "line ten")
    rows = around_changes(side_by_side(old, new), context=2)
    assert rows[0] == 7  # lines 1-7 hidden; 8-9 and 11-12 are the context of line 10
    shown = [row for row in rows if not isinstance(row, int)]
    assert [row[1] for row in shown] == [8, 9, 10, 11, 12]
    assert rows[-1] == 20 - 12
    assert around_changes(side_by_side("a\nb\n", "a\nb\n")) == [2]


def test_the_follow_up_bars_add_up_to_the_handoffs_the_sentence_counts():
    import re

    from services.console.pipeline import _funnel_charts

    sla = {
        "handoffs": 39,
        "answered_in_time": 0,
        "answered_late": 0,
        "breached_unanswered": 0,
        "open": 35,
        "superseded": 4,
        "compliance": None,
        "median_follow_up_seconds": None,
    }
    report = {"stages": {}, "conversion": [], "sla": sla, "rejections": []}
    chart = str(_funnel_charts(report)["sla_chart"])
    values = [int(v) for v in re.findall(r'<text class="value"[^>]*>(\d+)</text>', chart)]
    assert sum(values) == sla["handoffs"]
