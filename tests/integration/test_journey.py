"""The buyer journey through the real broker and database: a lead's walk shown by the API,
and the journey report on a planted history whose answers are known."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import orjson

from tests.helpers.database import db_fetch, drained, migrate_to
from tests.helpers.kafka import produce, read_all, values
from tests.helpers.replays import assert_journey_as_replayed, assert_leads_match, replay
from tests.helpers.service import client_for
from tests.helpers.waiting import wait_for
from tests.unit.test_journey import the_search_ad_visitor

T0 = datetime(2026, 10, 1, 9, 0, tzinfo=UTC)
HOUR, DAY = timedelta(hours=1), timedelta(days=1)
PLANTED = "/customers/fleet-co"


async def test_a_lead_walks_the_journey_and_the_api_shows_where_it_is(service, settings):
    steps = the_search_ad_visitor()
    # The anonymous visits first, as the browser sent them (another key, maybe another
    # partition), then the rest in order.
    await produce(settings, steps[:2])
    await wait_for(lambda: drained(settings, 2), what="the anonymous visits")
    await produce(settings, steps[2:])
    await wait_for(lambda: drained(settings, len(steps)), what="the journey")
    expected = replay(steps)
    await assert_leads_match(settings, expected)
    await assert_journey_as_replayed(settings, expected)

    transitions = values(
        await read_all(settings, settings.topic_transitions, expect=len(expected.transitions))
    )
    to_sal = next(t for t in transitions if t["to_stage"] == "sal")
    assert to_sal["journey_phase"] == "evaluation"

    async with client_for(service.container) as http:
        lead = (await http.get("/v1/leads/u-dana")).json()
        history = (await http.get("/v1/leads/u-dana/history")).json()
        in_decision = (await http.get("/v1/leads", params={"phase": "decision"})).json()
        in_trigger = (await http.get("/v1/leads", params={"phase": "trigger"})).json()
        bad = await http.get("/v1/leads", params={"phase": "<script>"})
    journey = lead["journey"]
    assert journey["phase"] == "decision"
    assert journey["first_touch"]["channel"] == "paid"
    assert journey["entered_via"]["out_of_market"] == "paid"
    assert [(m["from_phase"], m["to_phase"], m["reason"]) for m in history["journey"]] == [
        (None, "trigger", "merge"),
        ("trigger", "consideration", "evidence"),
        ("consideration", "evaluation", "evidence"),
        ("evaluation", "consideration", "quiet"),
        ("consideration", "decision", "evidence"),
    ]
    assert history["journey"][2]["caused_by"] == steps[4]["messageId"]
    assert [i["lead_id"] for i in in_decision["items"]] == ["u-dana"]
    assert in_decision["items"][0]["journey_phase"] == "decision"
    assert in_trigger["items"] == []
    assert bad.status_code == 422


def _planted_moves() -> tuple[list[tuple], list[tuple], list[tuple]]:
    """Ten leads enter consideration. p0-p3 move on to evaluation two days later, each
    having read the planted customer story; p4 and p5 fall back after twenty days; p6-p9
    are still comparing. p0 and p1 go on to decision."""
    moves: list[tuple] = []
    leads: list[tuple] = []
    transitions: list[tuple] = []
    channel = {**dict.fromkeys(range(6), "search"), 6: "paid", 7: "paid", 8: "paid", 9: "email"}
    for i in range(10):
        lead, entered = f"p{i}", T0 + i * HOUR
        moves.append((lead, 1, None, "consideration", "evidence", channel[i], [], entered))
        phase = "consideration"
        seen_now: list[str] = []
        if i < 4:
            moves.append(
                (
                    lead,
                    2,
                    "consideration",
                    "evaluation",
                    "evidence",
                    "direct",
                    ["/pricing", "/compare/acme-vs-us", PLANTED],
                    entered + 2 * DAY,
                )
            )
            phase = "evaluation"
            if i < 2:
                moves.append(
                    (
                        lead,
                        3,
                        "evaluation",
                        "decision",
                        "evidence",
                        "direct",
                        [PLANTED],
                        entered + 5 * DAY,
                    )
                )
                phase = "decision"
        elif i < 6:
            moves.append(
                (
                    lead,
                    2,
                    "consideration",
                    "trigger",
                    "quiet",
                    None,
                    ["/pricing", "/compare/acme-vs-us"],
                    entered + 20 * DAY,
                )
            )
            phase = "trigger"
        else:
            seen_now = {
                6: ["/pricing"],
                7: ["/pricing"],
                8: ["/pricing", "/compare/acme-vs-us"],
                9: [],
            }[i]
        leads.append((lead, orjson.dumps({"journey": {"phase": phase, "seen": seen_now}}).decode()))
    # p0-p2 reach mql after entering consideration; p3 had before it (not a conversion).
    for n, (lead, stage, at) in enumerate(
        [
            ("p0", "mql", T0 + 3 * DAY),
            ("p0", "sql", T0 + 6 * DAY),
            ("p0", "customer", T0 + 9 * DAY),
            ("p1", "mql", T0 + 3 * DAY),
            ("p2", "mql", T0 + 4 * DAY),
            ("p3", "mql", T0 + 2 * HOUR),
        ]
    ):
        transitions.append((f"{lead}:{n}", lead, stage, at))
    return moves, leads, transitions


WINDOW = {"since": (T0 - HOUR).isoformat(), "until": (T0 + 60 * DAY).isoformat()}


async def plant_history(settings) -> None:
    """The planted history in the database: moves, leads, one account, transitions."""
    moves, leads, transitions = _planted_moves()
    columns = list(zip(*moves, strict=True))
    await db_fetch(
        settings,
        "INSERT INTO journey_moves (subject, subject_id, seq, from_phase, to_phase, reason, "
        "channel, seen, occurred_at, ruleset_version) "
        "SELECT 'lead', s, q, f, t, r, c, se::jsonb, o, 1 FROM unnest($1::text[], $2::int[], "
        "$3::text[], $4::text[], $5::text[], $6::text[], $7::text[], $8::timestamptz[]) "
        "AS u(s, q, f, t, r, c, se, o)",
        *[list(c) for c in columns[:6]],
        [orjson.dumps(seen).decode() for seen in columns[6]],
        list(columns[7]),
    )
    await db_fetch(
        settings,
        # The phase column is written with the document, as lead_store.save_leads does.
        "INSERT INTO leads (lead_id, stage, scoring, journey_phase) "
        "SELECT l, 'lead', s::jsonb, s::jsonb -> 'journey' ->> 'phase' "
        "FROM unnest($1::text[], $2::text[]) AS u(l, s)",
        *[list(c) for c in zip(*leads, strict=True)],
    )
    await db_fetch(
        settings,
        "INSERT INTO accounts (account_id, scoring, journey_phase) VALUES "
        "('acct-1', '{\"journey\": {\"phase\": \"evaluation\"}}', 'evaluation')",
    )
    await db_fetch(
        settings,
        "INSERT INTO transitions (transition_id, lead_id, from_stage, to_stage, reason, rule_id, "
        "ruleset_version, caused_by, score_total, occurred_at, emitted_at) "
        "SELECT t, l, 'lead', s, 'threshold', NULL, 1, NULL, 0, o, o FROM unnest($1::text[], "
        "$2::text[], $3::text[], $4::timestamptz[]) AS u(t, l, s, o)",
        *[list(c) for c in zip(*transitions, strict=True)],
    )


async def test_the_journey_report_on_a_planted_history(admin_container, settings):
    await plant_history(settings)
    async with client_for(admin_container, "viewer") as viewer:
        response = await viewer.get("/v1/journey", params=WINDOW)
    assert response.status_code == 200, response.text
    report = response.json()
    phases: dict[str, Any] = {p["phase"]: p for p in report["phases"]}
    # The starter set's phases, in its order.
    assert list(phases) == [
        "out_of_market",
        "trigger",
        "consideration",
        "evaluation",
        "decision",
        "experience",
        "loyalty",
    ]
    now = {p: (f["leads_now"], f["accounts_now"]) for p, f in phases.items() if f["leads_now"]}
    assert now == {
        "trigger": (2, 0),
        "consideration": (4, 0),
        "evaluation": (2, 1),
        "decision": (2, 0),
    }
    considering = phases["consideration"]
    # Four left after two days, two after twenty, four are still there: median two days.
    assert (considering["entered"], considering["median_seconds_in_phase"]) == (10, 2 * 86400)
    assert phases["evaluation"]["median_seconds_in_phase"] == 3 * 86400
    assert considering["channels"] == {"search": 6, "paid": 3, "email": 1}
    assert phases["evaluation"]["channels"] == {"direct": 4}
    assert considering["conversion"] == {
        "entered": 10,
        "mql": {"reached": 3, "rate": 0.3},
        "sql": {"reached": 1, "rate": 0.1},
        "won": {"reached": 1, "rate": 0.1},
    }
    # The next step: everyone who moved on read the planted story, nobody who stalled did.
    assert (considering["moved_on"], considering["stalled"]) == (4, 6)
    steps = considering["next_steps"]
    assert steps[0] == {"content": PLANTED, "moved_on": 4, "stalled": 0, "lift": 7.0}
    assert [s["content"] for s in steps] == [PLANTED, "/compare/acme-vs-us", "/pricing"]
    assert [s["lift"] for s in steps[1:]] == [1.75, round(7 / 6, 3)]
    moved = {(m["from_phase"], m["to_phase"], m["reason"]): m["count"] for m in report["moves"]}
    assert moved == {
        (None, "consideration", "evidence"): 10,
        ("consideration", "evaluation", "evidence"): 4,
        ("consideration", "trigger", "quiet"): 2,
        ("evaluation", "decision", "evidence"): 2,
    }
    # The console page and the lists show the same.
    async with client_for(admin_container, "viewer") as viewer:
        listed = (await viewer.get("/v1/leads", params={"phase": "trigger"})).json()
        accounts = (await viewer.get("/v1/accounts", params={"phase": "evaluation"})).json()
    assert [i["lead_id"] for i in listed["items"]] == ["p4", "p5"]
    assert [a["account_id"] for a in accounts["items"]] == ["acct-1"]


async def test_content_an_event_carried_is_escaped_on_the_journey_page(admin_container, settings):
    """A page path is whatever a tracker sent: on the console it is text, never markup."""
    from tests.integration.test_console import console_client, sign_in

    hostile = '/blog/<script>alert("x")</script>'
    at = datetime.now(UTC) - DAY
    await db_fetch(
        settings,
        "INSERT INTO journey_moves (subject, subject_id, seq, from_phase, to_phase, reason, "
        "content, channel, seen, occurred_at, ruleset_version) VALUES "
        "('lead', 'h1', 1, NULL, 'trigger', 'evidence', $1, 'direct', '[]', $2, 1), "
        "('lead', 'h1', 2, 'trigger', 'consideration', 'evidence', '/pricing', 'direct', "
        "$3::jsonb, $2 + interval '1 hour', 1)",
        hostile,
        at,
        orjson.dumps([hostile]).decode(),
    )
    async with console_client(admin_container) as client:
        await sign_in(client, "viewer")
        page = await client.get("/console/journey")
    assert page.status_code == 200, page.text
    assert "<script>alert" not in page.text
    assert "&lt;script&gt;alert(&#34;x&#34;)&lt;/script&gt;" in page.text


async def test_the_phase_column_keeps_its_values_when_the_service_starts_writing_it(settings):
    """Migration 0019: the generated column becomes a written one, filled from the documents."""
    await migrate_to(settings, "0018")
    await db_fetch(
        settings,
        "INSERT INTO leads (lead_id, stage, scoring) VALUES "
        "('u-1', 'lead', '{\"journey\": {\"phase\": \"evaluation\"}}'), "
        "('u-2', 'lead', '{}')",
    )
    await db_fetch(
        settings,
        "INSERT INTO accounts (account_id, scoring) VALUES "
        '(\'acct-1\', \'{"journey": {"phase": "decision"}}\')',
    )
    await migrate_to(settings)
    leads = await db_fetch(settings, "SELECT lead_id, journey_phase FROM leads ORDER BY 1")
    assert [tuple(r) for r in leads] == [("u-1", "evaluation"), ("u-2", None)]
    accounts = await db_fetch(settings, "SELECT journey_phase FROM accounts")
    assert [r["journey_phase"] for r in accounts] == ["decision"]
    generated = await db_fetch(
        settings,
        "SELECT table_name FROM information_schema.columns "
        "WHERE column_name = 'journey_phase' AND is_generated <> 'NEVER'",
    )
    assert generated == []
    indexed = await db_fetch(
        settings, "SELECT indexname FROM pg_indexes WHERE indexname LIKE '%journey_phase'"
    )
    assert sorted(r["indexname"] for r in indexed) == [
        "accounts_by_journey_phase",
        "leads_by_journey_phase",
    ]
