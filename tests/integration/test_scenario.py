"""A lead's journey through the real broker and database: exact records on both topics."""

from __future__ import annotations

import re
from datetime import datetime
from pathlib import Path

import httpx
import orjson

from services.http import create_app
from tests.helpers.database import drained
from tests.helpers.kafka import produce, read_all, values
from tests.helpers.waiting import wait_for

HALF_LIFE_MIN = 30 * 24 * 60


def decayed(points: float, minutes_ago: float) -> float:
    return points * 0.5 ** (minutes_ago / HALF_LIFE_MIN)


def score(fit: float, engagement: float) -> dict[str, float]:
    fit, engagement = round(fit, 2), round(engagement, 2)
    return {"total": round(fit + engagement, 2), "fit": fit, "engagement": engagement}


# The starter set's second product line: Dana's persona, size and country count for it
# (15 + 10 + 5), the transport industry does not; no warehouse reading, so B3.
WAREHOUSE = {"total": 30.0, "fit": 30.0, "engagement": 0.0, "label": "B3"}


def by_score(doc: dict, label: str) -> dict:
    """Both scores and the label; the default score alone qualified (the trigger counts
    for it only)."""
    return {
        "scores": {"default": {**doc, "label": label}, "warehouse": WAREHOUSE},
        "qualified_by": ["default"],
        "label": label,
    }


# The tutorial's worked example (docs/tutorial.md) is this file, sent as `make send` sends it.
EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "journey.jsonl"
EVENTS = [orjson.loads(line) for line in EXAMPLE.read_bytes().splitlines() if line.strip()]


async def test_the_worked_example_gives_the_readmes_records(service, settings):
    # The anonymous visit is keyed by its anonymous id, so it may sit on another partition
    # than the rest; it is sent (and scored) first, as a browser would have sent it.
    await produce(settings, EVENTS[:1])
    await wait_for(lambda: drained(settings, 1), what="the anonymous visit")
    await produce(settings, EVENTS[1:])
    transitions = values(await read_all(settings, settings.topic_transitions, expect=2))
    notifications = values(await read_all(settings, settings.topic_notifications, expect=2))

    fit = 15 + 10 + 10 + 5  # decision-maker, icp-industry, icp-size, icp-country
    # Identified: the anonymous pricing visit a minute earlier is merged in, and with the
    # fit of an ICP owner the lead is over the mql threshold at once.
    at_mql = decayed(15, 1)
    at_sal = decayed(15, 3) + decayed(15, 1) + 30
    # The account: its fit (North America 5, transportation 10, 14 employees 15: the group
    # call carries the company's traits), Dana's engagement capped at 40, and the economic
    # buyer's role covered (15).
    account_score = 30 + 40 + 15
    for record in transitions:
        assert datetime.fromisoformat(record.pop("emitted_at"))
    assert transitions == [
        {
            "transition_id": "u-42:1",
            "lead_id": "u-42",
            "account_id": None,  # the group call comes after
            "from_stage": "lead",
            "to_stage": "mql",
            "reason": "threshold",
            "reason_detail": None,
            "rule_id": None,
            "score": score(fit, at_mql),
            "ruleset_version": 1,
            "caused_by": "m-1001",
            "occurred_at": "2026-11-20T09:15:00Z",
            "committee_role": "economic_buyer",  # an owner holds the budget
            "account_score": None,
            # Fit 40 is an A, engagement 15 a 2.
            **by_score(score(fit, at_mql), "A2"),
            # The anonymous pricing visit placed the lead in brand consideration.
            "journey_phase": "consideration",
        },
        {
            "transition_id": "u-42:2",
            "lead_id": "u-42",
            "account_id": "acct-9",
            "from_stage": "mql",
            "to_stage": "sal",
            "reason": "trigger",
            "reason_detail": None,
            "rule_id": "demo-request",
            "score": score(fit, at_sal),
            "ruleset_version": 1,
            "caused_by": "m-1004",
            "occurred_at": "2026-11-20T09:17:00Z",
            "committee_role": "economic_buyer",
            "account_score": account_score,
            **by_score(score(fit, at_sal), "A1"),
            "journey_phase": "evaluation",  # a demo request: active evaluation
        },
    ]
    profile = {"email": "dana@trucking-co.com", "title": "Owner", "company": "Trucking Co"}

    def fit_signal(rule_id: str, description: str, points: float) -> dict:
        return {
            "rule_id": rule_id,
            "description": description,
            "category": "fit",
            "points": points,
            "hits": 1,
            "ignored": 0,
            "contribution": points,
            "last_seen": None,
        }

    def pricing(contribution: float, hits: int, last_seen: str) -> dict:
        return {
            "rule_id": "pricing-page",
            "description": "Viewed the pricing page",
            "category": "engagement",
            "points": 15,
            "hits": hits,
            "ignored": 0,
            "contribution": contribution,
            "last_seen": last_seen,
        }

    fit_signals = [
        fit_signal("decision-maker", "Decision-maker title", 15),
        fit_signal("icp-industry", "Transportation or logistics company", 10),
        fit_signal("icp-size", "Company size in the ideal range (5-500)", 10),
        fit_signal("icp-country", "Company in North America", 5),
    ]
    warehouse_signals = [fit_signals[0], fit_signals[2], fit_signals[3]]
    demo = {
        "rule_id": "demo-request",
        "description": "Requested a demo",
        "category": "engagement",
        "points": 30,
        "hits": 1,
        "ignored": 0,
        "contribution": 30,
        "last_seen": "2026-11-20T09:17:00Z",
    }
    assert notifications == [
        {
            "notification_id": "u-42:1:promotion",
            "type": "promotion",
            "lead_id": "u-42",
            "stage": "mql",
            "priority": "warm",
            "score": score(fit, at_mql),
            "signals": [
                fit_signals[0],
                pricing(round(at_mql, 2), 1, "2026-11-20T09:14:00Z"),
                *fit_signals[1:],
            ],
            "profile": profile,
            "owner": "queue:default",
            "respond_by": "2026-11-21T09:15:00Z",
            "ruleset_version": 1,
            "occurred_at": "2026-11-20T09:15:00Z",
            "committee_role": "economic_buyer",
            "account_score": None,
            **by_score(score(fit, at_mql), "A2"),
            # The anonymous pricing visit placed the lead in brand consideration.
            "journey_phase": "consideration",
            "signals_by_score": {"warehouse": warehouse_signals},
        },
        {
            "notification_id": "u-42:2:promotion",
            "type": "promotion",
            "lead_id": "u-42",
            "stage": "sal",
            "priority": "hot",
            "score": score(fit, at_sal),
            "signals": [
                demo,
                pricing(round(at_sal - 30, 2), 2, "2026-11-20T09:16:00Z"),
                *fit_signals,
            ],
            "profile": profile,
            "owner": "queue:default",
            "respond_by": "2026-11-20T10:17:00Z",
            "ruleset_version": 1,
            "occurred_at": "2026-11-20T09:17:00Z",
            "committee_role": "economic_buyer",
            "account_score": account_score,
            **by_score(score(fit, at_sal), "A1"),
            "journey_phase": "evaluation",  # a demo request: active evaluation
            "signals_by_score": {"warehouse": warehouse_signals},
        },
    ]
    assert [r.key for r in await read_all(settings, settings.topic_transitions, expect=2)] == [
        b"u-42",
        b"u-42",
    ]

    app = create_app(service.container)
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://localhost"
    ) as client:
        for lead_id in ("u-42", "a-77"):  # the anonymous id now reads the identified lead
            body = (await client.get(f"/v1/leads/{lead_id}")).json()
            assert body["lead_id"] == "u-42"
            assert body["stage"] == "sal"
            assert body["score"]["fit"] == fit
            # As of now, weeks after the last event, engagement has decayed further.
            assert body["score"]["engagement"] < round(at_sal, 2)
            assert [s["rule_id"] for s in body["signals"]][:3] == [
                "demo-request",
                "pricing-page",
                "decision-maker",
            ]
            # Each part decayed as the whole: the explanation still adds up.
            assert (
                round(sum(s["contribution"] for s in body["signals"]), 2)
                == (body["score"]["total"])
            )
        missing = await client.get("/v1/leads/nobody")
        assert missing.status_code == 404
        assert missing.json()["error"] == "lead_not_found"
        ready = await client.get("/readyz")
        assert ready.status_code == 200 and ready.json()["checks"]["partitions"] is True
        metrics = (await client.get("/metrics")).text
        assert 'leadscore_events_consumed_total{result="scored"} 5.0' in metrics
        assert (
            'leadscore_transitions_total{from_stage="mql",reason="trigger",to_stage="sal"} 1.0'
            in metrics
        )
        assert "leadscore_active_ruleset_version 1.0" in metrics
    await wait_for(
        lambda: (
            service.container.metrics.outbox_published.labels(
                settings.topic_notifications
            )._value.get()
            == 2
        ),
        what="published counter",
    )

    # The example is dated in the past, so on a real clock the hot handoff's hour has long
    # run out when it arrives: `make send` is followed at once by an sla_breach, which
    # carries the same picture of the lead as the promotion did.
    service.clock.now = datetime.fromisoformat("2026-11-20T10:30:00+00:00").timestamp()
    assert await service.container.deadlines.check_once() == 1
    notes = values(await read_all(settings, settings.topic_notifications, expect=3))
    [breach] = [n for n in notes if n["type"] == "sla_breach"]
    assert breach["notification_id"] == "u-42:2:sla_breach"
    assert (breach["stage"], breach["respond_by"]) == ("sal", "2026-11-20T10:17:00Z")
    assert (breach["label"], breach["committee_role"]) == ("A1", "economic_buyer")
    assert breach["account_score"] == account_score
    assert breach["scores"]["warehouse"] == WAREHOUSE
    assert breach["signals_by_score"] == {"warehouse": warehouse_signals}

    # One score, said which: the lead page gives it as of now and at the last event (the
    # value the list sorts by), and its timeline what each event added then and adds now.
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app, client=("127.0.0.1", 50000)),
        base_url="http://localhost",
    ) as browser:
        page = (await browser.get("/console/leads/u-42")).text
    assert re.search(r'id="score-at-last-event">100 at its last event, 2026-11-20 09:17', page)
    demo = re.search(r"added 30 at the last event, adds ([0-9.]+) now", page)
    assert demo is not None and float(demo.group(1)) < 30  # weeks later: decayed
    now_total = float(re.search(r'id="score-total">([0-9.]+)<', page).group(1))
    assert now_total < 100

    # The journey counts Dana once: her anonymous visit's move into brand consideration is
    # hers (a-77 was merged into u-42), not a second person's.
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://localhost"
    ) as client:
        report = (
            await client.get(
                "/v1/journey",
                params={"since": "2026-11-20T00:00:00Z", "until": "2026-11-21T00:00:00Z"},
            )
        ).json()
    entered = {p["phase"]: p["entered"] for p in report["phases"]}
    assert {p["phase"]: p["conversion"]["entered"] for p in report["phases"]} == entered
    assert entered["consideration"] == 1 and entered["evaluation"] == 1, entered
