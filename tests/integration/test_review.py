"""The review's outcome report on a history with planted outcomes, checked by hand."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import orjson

from services.adapters.postgres.db import driver
from services.reports.review import review_report

SINCE = datetime(2026, 10, 1, tzinfo=UTC)
UNTIL = datetime(2026, 11, 1, tzinfo=UTC)
DAY = timedelta(days=1)
HOUR = timedelta(hours=1)


async def insert_feedback(pg, rows, *, prefix: str, refused_last: bool = False) -> None:
    """(lead, outcome, at) rows as sales feedback, applied (the last one refused if asked)."""
    for n, (lead, outcome, at) in enumerate(rows):
        await pg.execute(
            "INSERT INTO feedback (feedback_id, lead_id, outcome, at, result) "
            "VALUES ($1, $2, $3, $4, $5)",
            f"{prefix}{n}",
            lead,
            outcome,
            at,
            "refused" if refused_last and n == len(rows) - 1 else "applied",
        )


async def plant(pg) -> None:
    """Five leads handed off under version 1 in October, one under version 2, one before
    October, one never; their feedback; the rules they hit (and some that do not count)."""
    handoffs = [
        # lead, from, to, version, score, when
        ("a1", "lead", "mql", 1, 30.0, SINCE + 1 * DAY),
        ("a2", "lead", "mql", 1, 60.0, SINCE + 2 * DAY),
        ("a3", "recycled", "mql", 1, 80.0, SINCE + 3 * DAY),
        ("a4", "lead", "mql", 1, 120.0, SINCE + 4 * DAY),
        ("b1", "lead", "sal", 1, 160.0, SINCE + 5 * DAY),  # a demo request: straight to sal
        ("c1", "lead", "mql", 2, 90.0, SINCE + 6 * DAY),  # another version's handoff
        ("d1", "lead", "mql", 1, 70.0, SINCE - 5 * DAY),  # before the window
    ]
    for n, (lead, src, dst, version, score, at) in enumerate(handoffs):
        await pg.execute(
            "INSERT INTO transitions (transition_id, lead_id, from_stage, to_stage, reason, "
            "ruleset_version, score_total, occurred_at, emitted_at) "
            "VALUES ($1, $2, $3, $4, 'threshold', $5, $6, $7, $7)",
            f"{lead}:{n}",
            lead,
            src,
            dst,
            version,
            score,
            at,
        )
    # A later move of a1 is not a second handoff.
    await pg.execute(
        "INSERT INTO transitions (transition_id, lead_id, from_stage, to_stage, reason, "
        "ruleset_version, score_total, occurred_at, emitted_at) "
        "VALUES ('a1:9', 'a1', 'mql', 'sal', 'feedback', 1, 30, $1, $1)",
        SINCE + 9 * DAY,
    )
    handed = {lead: at for lead, _, _, _, _, at in handoffs}
    feedback = [
        ("a1", "lost", handed["a1"] + 5 * DAY),
        ("a2", "accepted", handed["a2"] + HOUR),
        ("a2", "qualified", handed["a2"] + DAY),
        ("a2", "won", handed["a2"] + 10 * DAY),
        ("a3", "accepted", handed["a3"] + HOUR),
        ("a3", "lost", handed["a3"] + 3 * DAY),
        ("a4", "accepted", handed["a4"] + HOUR),
        ("a4", "qualified", handed["a4"] + 2 * DAY),
        ("b1", "accepted", handed["b1"] + HOUR),
        ("b1", "qualified", handed["b1"] + 3 * DAY),
        ("b1", "won", handed["b1"] + 20 * DAY),
        ("d1", "qualified", SINCE + DAY),  # qualified in October, handed off before
        ("e1", "qualified", SINCE + 7 * DAY),  # qualified, never handed off: a miss
        ("a4", "won", handed["a4"] + DAY),  # refused: not applied, does not count
    ]
    await insert_feedback(pg, feedback, prefix="f", refused_last=True)
    hits = [
        ("b1", handed["b1"] - HOUR, [["demo-request", 30, True]]),
        ("a2", handed["a2"] - HOUR, [["pricing-page", 15, True], ["careers-page", -20, False]]),
        ("a1", handed["a1"] - DAY, [["pricing-page", 15, True], ["blog", 1, True]]),
        ("a3", handed["a3"] - DAY, [["pricing-page", 15, True]]),
        ("a3", handed["a3"] + DAY, [["webinar", 8, True]]),  # after the handoff
    ]
    for n, (lead, at, event_hits) in enumerate(hits):
        await pg.execute(
            "INSERT INTO lead_events (lead_id, message_id, type, occurred_at, event, hits, "
            "points, ruleset_version) VALUES ($1, $2, 'page', $3, '{}', $4::json, 0, 1)",
            lead,
            f"m{n}",
            at,
            orjson.dumps(event_hits).decode(),
        )


async def test_the_outcome_report_matches_the_planted_history(admin_container):
    async with admin_container.db.connect() as conn:
        pg = await driver(conn)
        await plant(pg)
        report = await review_report(pg, SINCE, UNTIL, 1)
    assert report["handed_off"] == 5  # a1-a4 and b1
    outcomes = report["outcomes"]
    assert {k: (v["leads"], v["share"]) for k, v in outcomes.items()} == {
        "accepted": (4, 0.8),
        "qualified": (3, 0.6),
        "converted": (0, 0.0),
        "won": (2, 0.4),
        "lost": (2, 0.4),
    }
    assert outcomes["accepted"]["median_seconds"] == 3600
    assert outcomes["won"]["median_seconds"] == 15 * 86400  # 10 and 20 days
    assert outcomes["converted"]["median_seconds"] is None
    fixed = {
        (b["from"], b["to"]): (b["leads"], b["won_share"]) for b in report["score_bands"]["fixed"]
    }
    assert fixed == {
        (25.0, 50.0): (1, 0.0),
        (50.0, 75.0): (1, 1.0),
        (75.0, 100.0): (1, 0.0),
        (100.0, 150.0): (1, 0.0),
        (150.0, None): (1, 1.0),
    }
    deciles = report["score_bands"]["deciles"]
    assert [d["decile"] for d in deciles] == [1, 2, 3, 4, 5]
    assert [d["low"] for d in deciles] == [30.0, 60.0, 80.0, 120.0, 160.0]
    assert [d["qualified_share"] for d in deciles] == [0.0, 1.0, 0.0, 1.0, 1.0]
    rules = {r["rule_id"]: r for r in report["rules"]}
    # Won: a2, b1. Lost: a1, a3. Only hits before the handoff, and only counted ones.
    assert set(rules) == {"demo-request", "pricing-page", "blog"}
    assert report["rules"][0]["rule_id"] == "demo-request"  # only won leads hit it
    assert rules["demo-request"]["lift"] == 2.0  # won 1 of 1 hitting it, against 2 of 4
    assert rules["pricing-page"]["lift"] == round((1 / 3) / 0.5, 4)
    assert rules["blog"]["lift"] == 0.0
    assert (rules["pricing-page"]["won_share_hit"], rules["pricing-page"]["lost_share_hit"]) == (
        0.5,
        1.0,
    )
    # Sales qualified a2, a4, b1 (handed off) and d1, e1 (not, in this window, by version 1).
    assert report["mql_definition"] == {
        "handed_off": 5,
        "sales_qualified": 5,
        "qualified_and_handed_off": 3,
        "missed": 2,
        "precision": 0.6,
        "recall": 0.6,
    }


async def test_an_empty_window_reports_nothing_without_dividing_by_zero(admin_container):
    async with admin_container.db.connect() as conn:
        report = await review_report(await driver(conn), SINCE, UNTIL, 1)
    assert report["handed_off"] == 0
    assert all(
        v == {"leads": 0, "share": None, "median_seconds": None}
        for v in report["outcomes"].values()
    )
    assert report["rules"] == [] and report["score_bands"] == {"deciles": [], "fixed": []}
    assert report["mql_definition"]["precision"] is None


async def test_the_review_endpoint_for_viewers_with_its_refusals(admin_container):
    from tests.helpers.service import client_for

    async with admin_container.db.connect() as conn:
        await plant(await driver(conn))
    window = {"since": SINCE.isoformat(), "until": UNTIL.isoformat()}
    async with client_for(admin_container, "viewer") as viewer:
        answer = await viewer.get("/v1/review", params=window)
        assert answer.status_code == 200, answer.text
        body = answer.json()
        assert body["version"] == 1 and body["handed_off"] == 5  # the active version
        assert body["score_bands"]["fixed"][0] == {
            "decile": None,
            "from": 25.0,
            "to": 50.0,
            "low": None,
            "high": None,
            "leads": 1,
            "qualified_share": 0.0,
            "won_share": 0.0,
        }
        assert body["mql_definition"]["recall"] == 0.6
        refusals = [
            ({**window, "version": 99}, 404, "ruleset_not_found"),
            ({"since": UNTIL.isoformat(), "until": SINCE.isoformat()}, 422, "invalid_request"),
            ({"since": "2026-10-01T00:00:00"}, 422, "invalid_request"),
            ({"version": "0"}, 422, "invalid_request"),
            ({"since": "yesterday"}, 422, "invalid_request"),
        ]
        for params, status, code in refusals:
            answer = await viewer.get("/v1/review", params=params)
            assert (answer.status_code, answer.json()["error"]) == (status, code), params
    async with client_for(admin_container) as anonymous:  # tokens configured, none given
        assert (await anonymous.get("/v1/review", params=window)).status_code == 401


async def test_the_account_side_counts_mqas_and_their_members_outcomes(admin_container):
    async with admin_container.db.connect() as conn:
        pg = await driver(conn)
        for n, (account, at) in enumerate(
            [("acme", SINCE + DAY), ("bolt", SINCE + 2 * DAY), ("core", SINCE - 3 * DAY)]
        ):
            await pg.execute(
                "INSERT INTO account_transitions (transition_id, account_id, seq, from_stage, "
                "to_stage, reason, ruleset_version, score_total, occurred_at, emitted_at, "
                "record) VALUES ($1, $2, 1, 'engaged', 'mqa', 'qualified', 1, 90, $3, $3, '{}')",
                f"{account}:{n}",
                account,
                at,
            )
        for lead, account in [("m1", "acme"), ("m2", "acme"), ("m3", "bolt"), ("m4", "dune")]:
            await pg.execute(
                "INSERT INTO leads (lead_id, stage, account_id) VALUES ($1, 'sal', $2)",
                lead,
                account,
            )
        feedback = [
            ("m1", "qualified", SINCE + 3 * DAY),
            ("m2", "won", SINCE + 9 * DAY),
            ("m3", "lost", SINCE + 4 * DAY),
            ("m3", "qualified", SINCE + HOUR),  # before bolt's MQA: not its outcome
            ("m4", "qualified", SINCE + 5 * DAY),  # dune never reached mqa: a miss
        ]
        await insert_feedback(pg, feedback, prefix="g")
        accounts = (await review_report(pg, SINCE, UNTIL, 1))["accounts"]
    assert accounts["mqa"] == 2  # acme and bolt; core's was before the window
    assert {k: (v["accounts"], v["share"]) for k, v in accounts["outcomes"].items()} == {
        "qualified": (1, 0.5),
        "won": (1, 0.5),
        "lost": (1, 0.5),
    }
    # Qualified in the window: acme (m1), bolt (m3, an hour in) and dune (m4).
    assert (accounts["sales_qualified"], accounts["qualified_and_mqa"]) == (3, 2)
    assert (accounts["missed"], accounts["precision"], accounts["recall"]) == (1, 1.0, 0.6667)


async def test_the_review_per_score_counts_the_leads_each_score_handed_off(admin_container):
    async with admin_container.db.connect() as conn:
        pg = await driver(conn)
        await plant(pg)
        # Which scores qualified each handoff, and each score's total at it.
        qualified_by = {
            "a1": {"default": 30.0},
            "a2": {"default": 60.0},
            "a3": {"warehouse": 80.0},
            "a4": {"warehouse": 120.0},
            "b1": {"default": 160.0, "warehouse": 160.0},
        }
        for lead, totals in qualified_by.items():
            record = {
                "qualified_by": list(totals),
                "scores": {name: {"total": total} for name, total in totals.items()},
            }
            await pg.execute(
                "UPDATE transitions SET record = $2::jsonb "
                "WHERE lead_id = $1 AND from_stage <> 'mql'",
                lead,
                orjson.dumps(record).decode(),
            )
        report = await review_report(pg, SINCE, UNTIL, 1)
    by_score = report["by_score"]
    assert set(by_score) == {"default", "warehouse"}
    # default: a1 lost, a2 qualified and won, b1 qualified and won; of the five leads sales
    # qualified in October (a2, a4, b1, d1, e1), it found two; two of the five handed off
    # were won, so its won share (2/3) is 1.67 times theirs.
    default = by_score["default"]
    assert (default["handed_off"], default["qualified"], default["won"]) == (3, 2, 2)
    assert (default["precision"], default["recall"], default["lift"]) == (0.6667, 0.4, 1.6667)
    warehouse = by_score["warehouse"]
    assert (warehouse["handed_off"], warehouse["qualified"], warehouse["won"]) == (3, 2, 1)
    assert (warehouse["precision"], warehouse["recall"], warehouse["lift"]) == (0.6667, 0.4, 0.8333)
    assert [(b["from"], b["leads"], b["won_share"]) for b in warehouse["fixed"]] == [
        (75.0, 1, 0.0),
        (100.0, 1, 0.0),
        (150.0, 1, 1.0),
    ]
