"""The funnel report on a generated history whose answers are known."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from tests.helpers.database import db_fetch
from tests.helpers.service import client_for

T0 = datetime(2026, 10, 1, 9, 0, tzinfo=UTC)
HOUR = timedelta(hours=1)


def transitions_of(lead: str, steps: list[tuple[str, str, datetime]]) -> list[tuple]:
    rows, previous = [], "lead"
    for n, (to_stage, reason, at) in enumerate(steps, start=1):
        rows.append((f"{lead}:{n}", lead, previous, to_stage, reason, at))
        previous = to_stage
    return rows


def history() -> tuple[list[tuple], list[tuple], list[tuple]]:
    transitions, handoffs, feedback = [], [], []
    for i in range(10):
        lead, mql_at = f"l{i}", T0 + i * HOUR
        steps = [("mql", "threshold", mql_at)]
        if i < 6:
            sal_at = mql_at + 2 * HOUR
            steps.append(("sal", "sales_feedback", sal_at))
            if i < 3:
                sql_at = sal_at + 10 * HOUR
                steps.append(("sql", "sales_feedback", sql_at))
                if i == 0:
                    steps.append(("opportunity", "sales_feedback", sql_at + 24 * HOUR))
                    steps.append(("customer", "sales_feedback", sql_at + 72 * HOUR))
        elif i >= 7:
            steps.append(("recycled", "sales_feedback", mql_at + 5 * HOUR))
            feedback.append(
                (f"f{i}", lead, "rejected", "timing" if i == 8 else "no budget", mql_at + 5 * HOUR)
            )
        transitions += transitions_of(lead, steps)
        # The mql handoff: answered in time, except l9 (late, after the breach) and l6 (never).
        answered = {6: None, 9: mql_at + 30 * HOUR}.get(i, mql_at + (5 if i >= 7 else 2) * HOUR)
        status = "breached" if i in (6, 9) else "answered"
        handoffs.append((f"{lead}:1", lead, "mql", mql_at, mql_at + 24 * HOUR, status, answered))
    # Outside the window: not counted.
    transitions += transitions_of("old", [("mql", "threshold", T0 - 10 * 24 * HOUR)])
    return transitions, handoffs, feedback


async def test_funnel_report_matches_the_known_answers(admin_container, settings):
    transitions, handoffs, feedback = history()
    await db_fetch(
        settings,
        "INSERT INTO transitions (transition_id, lead_id, from_stage, to_stage, reason, rule_id, "
        "ruleset_version, caused_by, score_total, occurred_at, emitted_at) "
        "SELECT t, l, f, s, r, NULL, 1, NULL, 0, o, o FROM unnest($1::text[], $2::text[], "
        "$3::text[], $4::text[], $5::text[], $6::timestamptz[]) AS u(t, l, f, s, r, o)",
        *[list(c) for c in zip(*transitions, strict=True)],
    )
    await db_fetch(
        settings,
        "INSERT INTO handoffs (transition_id, lead_id, stage, owner, entered_at, respond_by, "
        "status, answered_at) SELECT t, l, s, 'queue:default', e, r, st, a FROM unnest("
        "$1::text[], $2::text[], $3::text[], $4::timestamptz[], $5::timestamptz[], $6::text[], "
        "$7::timestamptz[]) AS u(t, l, s, e, r, st, a)",
        *[list(c) for c in zip(*handoffs, strict=True)],
    )
    await db_fetch(
        settings,
        "INSERT INTO feedback (feedback_id, lead_id, outcome, reason, at, result) "
        "SELECT f, l, o, r, a, 'applied' FROM unnest($1::text[], $2::text[], $3::text[], "
        "$4::text[], $5::timestamptz[]) AS u(f, l, o, r, a)",
        *[list(c) for c in zip(*feedback, strict=True)],
    )
    async with client_for(admin_container, "viewer") as viewer:
        response = await viewer.get(
            "/v1/funnel",
            params={"since": (T0 - HOUR).isoformat(), "until": (T0 + 30 * 24 * HOUR).isoformat()},
        )
    assert response.status_code == 200, response.text
    report = response.json()
    hours = 3600.0
    assert {
        s: (v["entered"], v["median_seconds_in_stage"], v["p90_seconds_in_stage"])
        for s, v in report["stages"].items()
    } == {
        # mql: six left after 2 h, three after 5 h, one is still there.
        "mql": (10, 2 * hours, 5 * hours),
        "sal": (6, 10 * hours, 10 * hours),
        "sql": (3, 24 * hours, 24 * hours),
        "opportunity": (1, 48 * hours, 48 * hours),
        "customer": (1, None, None),
        "recycled": (3, None, None),
        "disqualified": (0, None, None),
    }
    assert report["conversion"] == [
        {"from": "mql", "to": "sal", "entered": 10, "converted": 6, "rate": 0.6},
        {"from": "sal", "to": "sql", "entered": 6, "converted": 3, "rate": 0.5},
        {"from": "sql", "to": "opportunity", "entered": 3, "converted": 1, "rate": 0.3333},
        {"from": "opportunity", "to": "customer", "entered": 1, "converted": 1, "rate": 1.0},
    ]
    assert report["sla"] == {
        "handoffs": 10,
        "answered_in_time": 8,
        "answered_late": 1,
        "breached_unanswered": 1,
        "open": 0,
        "superseded": 0,
        "compliance": 0.8,
        # answered after 2 h (six), 5 h (two) and 30 h (one): the median is 2 h.
        "median_follow_up_seconds": 2 * hours,
    }
    assert report["rejections"] == [
        {"reason": "no budget", "count": 2},
        {"reason": "timing", "count": 1},
    ]
