"""Rule changes on a running pipeline: impact reports, activation on every instance,
re-scoring under load, and the lead reads that explain the results."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime, timedelta

from bench.workload import generate, lead_key
from schemas.rule_set import RuleSetDocument
from scoring_service.engine import Engine
from scoring_service.pipeline import Replay
from scoring_service.rules import compile_ruleset
from scoring_service.state import HITS
from services.runtime.bootstrap import bootstrap
from tests.helpers.database import committed_at_least, db_fetch, drained
from tests.helpers.kafka import produce
from tests.helpers.service import RunningService, client_for
from tests.helpers.waiting import wait_for
from tests.integration.test_admin_api import wait_job, with_rule_points

YESTERDAY = (datetime.now(UTC) - timedelta(days=1)).replace(microsecond=0)


def recent(minutes: float = 0) -> str:
    return (YESTERDAY + timedelta(minutes=minutes)).isoformat().replace("+00:00", "Z")


def lead_events(
    lead: str, *, title: str | None, pricing: int, demo: bool = False, company: str | None = None
) -> list[dict]:
    traits = {
        "email": f"{lead}@x.example",
        **({"title": title} if title else {}),
        **({"company": {"name": company}} if company else {}),
    }
    docs = [
        {
            "type": "identify",
            "messageId": f"{lead}-id",
            "userId": lead,
            "timestamp": recent(),
            "traits": traits,
        }
    ]
    docs += [
        {
            "type": "page",
            "messageId": f"{lead}-p{n}",
            "userId": lead,
            "timestamp": recent(),
            "properties": {"path": "/pricing"},
        }
        for n in range(pricing)
    ]
    if demo:
        docs.append(
            {
                "type": "track",
                "messageId": f"{lead}-demo",
                "userId": lead,
                "timestamp": recent(),
                "event": "Demo Requested",
            }
        )
    return docs


def three_leads(*, pricing_for_a: int) -> list[dict]:
    """a: an owner with some pricing visits; b: one visit; c: a demo request (from an
    analyst, no fit points, with what sales needs: a role and a company)."""
    return (
        lead_events("a", title="Owner", pricing=pricing_for_a)
        + lead_events("b", title=None, pricing=1)
        + lead_events("c", title="Analyst", pricing=0, demo=True, company="C Co")
    )


async def test_impact_report_matches_a_hand_computed_expectation(service, settings):
    # a: fit 15 + 2 pricing; b: 1 pricing; c: a demo request. Same timestamps: no decay.
    docs = three_leads(pricing_for_a=2)
    await produce(settings, docs)
    await wait_for(lambda: drained(settings, len(docs)))
    async with client_for(service.container) as admin:
        version = (
            await admin.post("/v1/rulesets", json=with_rule_points("pricing-page", 20))
        ).json()["version"]
        accepted = await admin.post(f"/v1/rulesets/{version}/impact", json={"days": 30})
        assert accepted.status_code == 202
        job = await wait_job(admin, accepted.json()["job_id"])
    assert job["status"] == "succeeded", job
    assert job["progress"] == {"done": 3, "total": 3, "fraction": 1.0}
    report = job["result"]
    # Active: a = 15 + 30 = 45 (lead), b = 15 (lead), c = 30 + demo trigger (sal).
    # Candidate: a = 15 + 40 = 55 (mql), b = 20 (lead), c unchanged (sal).
    assert report["leads"] == 3
    assert {s: v for s, v in report["stages"].items() if v["active"] or v["candidate"]} == {
        "lead": {"active": 2, "candidate": 1},
        "mql": {"active": 0, "candidate": 1},
        "sal": {"active": 1, "candidate": 1},
    }
    assert report["moved"] == 1
    assert report["moved_examples"] == [
        {
            "lead_id": "a",
            "active": {"stage": "lead", "total": 45.0},
            "candidate": {"stage": "mql", "total": 55.0},
            "rules": [{"rule_id": "pricing-page", "points_difference": 10.0}],
        }
    ]
    assert report["rules"] == [
        {
            "rule_id": "pricing-page",
            "points_active": 45.0,
            "points_candidate": 60.0,
            "difference": 15.0,
            "leads_affected": 2,
        }
    ]
    # An impact report changes nothing.
    assert [r["stage"] for r in await db_fetch(settings, "SELECT stage FROM leads ORDER BY 1")] == [
        "lead",
        "lead",
        "sal",
    ]


async def test_lead_list_and_history(service, settings):
    docs = three_leads(pricing_for_a=3)
    await produce(settings, docs)
    await wait_for(lambda: drained(settings, len(docs)))
    async with client_for(service.container) as viewer:
        everyone = (await viewer.get("/v1/leads")).json()
        assert [i["lead_id"] for i in everyone["items"]] == ["a", "b", "c"]
        assert everyone["next_cursor"] is None
        first = (await viewer.get("/v1/leads", params={"limit": 2})).json()
        rest = (await viewer.get("/v1/leads", params={"cursor": first["next_cursor"]})).json()
        assert [i["lead_id"] for i in first["items"] + rest["items"]] == ["a", "b", "c"]
        mql = (await viewer.get("/v1/leads", params={"stage": "mql"})).json()["items"]
        assert [(i["lead_id"], i["score"]["total"]) for i in mql] == [("a", 60.0)]
        rich = (await viewer.get("/v1/leads", params={"min_score": 30})).json()["items"]
        assert [i["lead_id"] for i in rich] == ["a", "c"]
        assert (await viewer.get("/v1/leads", params={"cursor": "%%%"})).status_code == 400

        history = (await viewer.get("/v1/leads/a/history")).json()
        assert [e["message_id"] for e in history["events"]] == ["a-id", "a-p0", "a-p1", "a-p2"]
        assert history["events"][1]["hits"] == [
            {"rule_id": "pricing-page", "points": 15.0, "counted": True}
        ]
        assert history["events"][1]["ruleset_version"] == 1
        [transition] = history["transitions"]
        assert (transition["transition_id"], transition["to_stage"]) == ("a:1", "mql")
        assert transition["score"] == {"total": 60.0, "fit": 15.0, "engagement": 45.0}
        assert (await viewer.get("/v1/leads/nobody/history")).status_code == 404


def split_between(first: RunningService, second: RunningService, partitions: int) -> bool:
    """The rebalance is over: each instance holds some partitions, together all of them."""
    a = first.container.consumer.assignment()
    b = second.container.consumer.assignment()
    return bool(a and b and not a & b and len(a | b) == partitions)


async def test_every_instance_scores_with_a_newly_activated_version(settings):
    first = await RunningService(bootstrap(settings)).start()
    second = await RunningService(bootstrap(settings)).start()
    try:
        await wait_for(
            lambda: split_between(first, second, settings.topic_partitions),
            what="the partitions split between both instances",
        )
        async with client_for(first.container) as admin:
            version = (await admin.post("/v1/rulesets", json=with_rule_points("blog", 4))).json()[
                "version"
            ]
            await admin.post(f"/v1/rulesets/{version}/activate")
        before = (first.container.scorer.batches, second.container.scorer.batches)
        produced = 0
        # Rounds of 200 events until both instances have scored some: a rebalance after the
        # split (the group settling) can hand one instance every partition for a while.
        for round_ in range(10):
            docs = [
                {
                    "type": "page",
                    "messageId": f"m{round_}-{n}",
                    "userId": f"u{n}",
                    "timestamp": recent(),
                    "properties": {"path": "/blog/x"},
                }
                for n in range(200)
            ]
            await produce(settings, docs)
            produced += len(docs)
            await wait_for(lambda: drained(settings, produced))  # noqa: B023 (awaited here)
            if (
                first.container.scorer.batches > before[0]
                and second.container.scorer.batches > before[1]
            ):
                break
        # Both instances scored some of these, and every event counted 4 points (version 2).
        assert first.container.scorer.batches > before[0]
        assert second.container.scorer.batches > before[1]
        assert first.container.scorer.engine.rules.version == version
        assert second.container.scorer.engine.rules.version == version
        rows = await db_fetch(settings, "SELECT DISTINCT ruleset_version, points FROM lead_events")
        assert [tuple(r) for r in rows] == [(version, 4.0)]
    finally:
        await second.close()
        await first.close()


async def test_rescore_under_load_loses_and_double_counts_nothing(settings):
    docs = list(generate(events=6_000, leads=300, seed=21))
    candidate = with_rule_points("pricing-page", 25)
    for rule in candidate["rules"]:
        if rule["id"] == "email-click":
            rule["limit"] = {"count": 2, "window_days": 7}
    small = settings.model_copy(update={"batch_max_records": 200})
    running = await RunningService(bootstrap(small)).start()
    try:
        feeding = asyncio.create_task(produce(small, docs, key=lead_key))
        await wait_for(lambda: committed_at_least(small, 2_000), timeout=60)
        async with client_for(running.container) as admin:
            version = (await admin.post("/v1/rulesets", json=candidate)).json()["version"]
            activated = (
                await admin.post(f"/v1/rulesets/{version}/activate", params={"rescore": "true"})
            ).json()
            await feeding
            job = await wait_job(admin, activated["rescore_job"], timeout=120)
        assert job["status"] == "succeeded", job
        await wait_for(lambda: drained(small, len(docs)), timeout=120)
    finally:
        await running.close()

    # What a fresh replay of every event under the new version gives, lead by lead.
    fresh = Replay(Engine(compile_ruleset(RuleSetDocument.model_validate(candidate), version)))
    import orjson

    from scoring_service.intake import Event, parse_event

    now = time.time()
    fresh.feed(
        [e for d in docs if isinstance(e := parse_event(orjson.dumps(d), now=now), Event)], now=now
    )
    rows = await db_fetch(small, "SELECT lead_id, fit, engagement, scoring::text AS s FROM leads")
    assert len(rows) == len(fresh.ws.leads)
    for row in rows:
        expected = fresh.ws.leads[row["lead_id"]]
        assert abs(row["fit"] - expected.fit) < 1e-9, row["lead_id"]
        assert abs(row["engagement"] - expected.engagement) < 1e-6, row["lead_id"]
        signals = orjson.loads(row["s"])["signals"]
        assert {k: v[HITS] for k, v in signals.items()} == {
            k: v[HITS] for k, v in expected.signals.items()
        }, row["lead_id"]
