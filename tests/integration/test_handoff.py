"""The sales handoff loop: feedback on both paths, follow-up deadlines, routing, funnel."""

from __future__ import annotations

import asyncio
from collections import Counter
from datetime import UTC, datetime, timedelta

import orjson
import pytest
from aiokafka import AIOKafkaProducer

from services.runtime.bootstrap import bootstrap
from stage_router.lifecycle import FEEDBACK_MOVES
from tests.helpers.database import db_fetch, drained
from tests.helpers.kafka import produce, read_all, values
from tests.helpers.service import RunningService, client_for
from tests.helpers.waiting import wait_for
from tests.integration.test_admin_api import starter_with
from tests.integration.test_rule_changes import split_between

STAGES = ["lead", "mql", "sal", "sql", "opportunity", "customer", "recycled", "disqualified"]
AT = "2026-11-10T12:00:00Z"
CASES = [(stage, outcome) for stage in STAGES for outcome in sorted(FEEDBACK_MOVES)]


async def seed_leads(settings, stages: dict[str, str]) -> None:
    """Leads placed directly in given stages, with some engagement to see recycling reset."""
    from tests.helpers.database import db_fetch as run

    await run(
        settings,
        "INSERT INTO leads (lead_id, stage, engagement, traits) "
        'SELECT l, s, 40, \'{"email": "x@y.example"}\' FROM unnest($1::text[], $2::text[]) '
        "AS u(l, s)",
        list(stages),
        list(stages.values()),
    )


def feedback_doc(lead_id: str, outcome: str, n: int = 0) -> dict:
    doc = {
        "feedback_id": f"f-{lead_id}-{n}",
        "lead_id": lead_id,
        "outcome": outcome,
        "at": AT,
        "by": "rep@crm",
    }
    if outcome == "rejected":
        doc["reason"] = "no budget"
    return doc


async def lead_stages(settings) -> dict[str, tuple[str, float]]:
    rows = await db_fetch(settings, "SELECT lead_id, stage, engagement FROM leads")
    return {r["lead_id"]: (r["stage"], r["engagement"]) for r in rows}


def expected_after(stage: str, outcome: str) -> str | None:
    legal_from, to_stage = FEEDBACK_MOVES[outcome]
    return to_stage if stage in legal_from else None


async def test_every_outcome_and_illegal_move_over_http(service, settings):
    leads = {f"h-{stage}-{outcome}": stage for stage, outcome in CASES}
    await seed_leads(settings, leads)
    async with client_for(service.container) as admin:
        for stage, outcome in CASES:
            lead_id = f"h-{stage}-{outcome}"
            body = {k: v for k, v in feedback_doc(lead_id, outcome).items() if k != "lead_id"}
            response = await admin.post(f"/v1/leads/{lead_id}/feedback", json=body)
            to_stage = expected_after(stage, outcome)
            if to_stage is None:
                assert response.status_code == 409, (stage, outcome, response.text)
                assert response.json()["error"] == "illegal_transition"
                assert outcome in response.json()["detail"]
            else:
                assert response.status_code == 200, (stage, outcome, response.text)
                transition = response.json()["transition"]
                assert (transition["from_stage"], transition["to_stage"]) == (stage, to_stage)
                assert (transition["reason"], transition["caused_by"]) == (
                    "sales_feedback",
                    body["feedback_id"],
                )
                again = await admin.post(f"/v1/leads/{lead_id}/feedback", json=body)
                assert again.status_code == 200 and again.json()["duplicate"] is True
        missing_reason = await admin.post(
            "/v1/leads/h-mql-rejected/feedback", json={"feedback_id": "x", "outcome": "rejected"}
        )
        assert missing_reason.status_code == 422
        unknown = await admin.post(
            "/v1/leads/nobody/feedback", json={"feedback_id": "y", "outcome": "accepted"}
        )
        assert (unknown.status_code, unknown.json()["error"]) == (404, "lead_not_found")
    stages = await lead_stages(settings)
    for stage, outcome in CASES:
        to_stage = expected_after(stage, outcome) or stage
        now_stage, engagement = stages[f"h-{stage}-{outcome}"]
        assert now_stage == to_stage, (stage, outcome)
        assert engagement == (0 if to_stage == "recycled" and stage != "recycled" else 40)
    metrics = service.container.metrics
    assert metrics.rejections.labels("no budget")._value.get() == 3  # from mql, sal, sql
    assert metrics.feedback.labels("won", "refused")._value.get() == len(STAGES) - 1


async def test_every_outcome_and_illegal_move_over_the_topic(service, settings):
    leads = {f"k-{stage}-{outcome}": stage for stage, outcome in CASES}
    await seed_leads(settings, leads)
    docs = [feedback_doc(f"k-{stage}-{outcome}", outcome) for stage, outcome in CASES]
    docs.append(docs[0])  # a duplicate
    bad = [
        b"{not json",
        orjson.dumps(
            {"feedback_id": "r", "lead_id": "k-mql-rejected", "outcome": "rejected", "at": AT}
        ),
    ]
    producer = AIOKafkaProducer(bootstrap_servers=settings.kafka_bootstrap)
    await producer.start()
    try:
        for doc in docs:
            await producer.send_and_wait(
                settings.topic_feedback, orjson.dumps(doc), key=doc["lead_id"].encode()
            )
        for raw in bad:
            await producer.send_and_wait(settings.topic_feedback, raw)
    finally:
        await producer.stop()
    illegal = [c for c in CASES if expected_after(*c) is None]
    dlq = await read_all(settings, settings.topic_dlq, expect=len(illegal) + len(bad))
    codes = Counter(dict(r.headers)["error"].decode() for r in dlq)
    assert codes == {"illegal_transition": len(illegal), "invalid_json": 1, "schema": 1}
    for record in dlq:
        headers = {k: v.decode() for k, v in record.headers}
        assert headers["source_topic"] == settings.topic_feedback
    stages = await lead_stages(settings)
    for stage, outcome in CASES:
        assert stages[f"k-{stage}-{outcome}"][0] == (expected_after(stage, outcome) or stage)
    transitions = values(
        await read_all(settings, settings.topic_transitions, expect=len(CASES) - len(illegal))
    )
    assert len(transitions) == len(CASES) - len(illegal)  # the duplicate moved nothing
    assert {t["reason"] for t in transitions} == {"sales_feedback"}


def _mql_journey(lead: str, at: datetime) -> list[dict]:
    stamp = at.isoformat().replace("+00:00", "Z")
    docs = [
        {
            "type": "identify",
            "messageId": f"{lead}-i",
            "userId": lead,
            "timestamp": stamp,
            "traits": {
                "email": f"{lead}@x.example",
                "title": "Owner",
                "company": {"country": "US"},
            },
        }
    ]
    docs += [
        {
            "type": "page",
            "messageId": f"{lead}-p{n}",
            "userId": lead,
            "timestamp": stamp,
            "properties": {"path": "/pricing"},
        }
        for n in range(3)
    ]
    return docs  # fit 15 + 5, engagement 45: mql at `at`


ENTERED = datetime(2026, 11, 10, 12, 0, tzinfo=UTC)


async def breaches(settings) -> list[dict]:
    notes = values(await read_all(settings, settings.topic_notifications, expect=0, timeout=1))
    return [n for n in notes if n["type"] == "sla_breach"]


async def test_sla_breach_is_emitted_once_across_instances_and_restarts(service, settings):
    docs = _mql_journey("late", ENTERED) + _mql_journey("prompt", ENTERED)
    await produce(settings, docs)
    await wait_for(lambda: drained(settings, len(docs)))
    async with client_for(service.container) as admin:
        answered = await admin.post(
            "/v1/leads/prompt/feedback",
            json={
                "feedback_id": "fb-prompt",
                "outcome": "rejected",
                "reason": "bad timing",
                "at": (ENTERED + timedelta(hours=2)).isoformat(),
            },
        )
        assert answered.status_code == 200
    deadlines = service.container.deadlines
    service.clock.now = (ENTERED + timedelta(hours=23)).timestamp()
    assert await deadlines.check_once() == 0  # the mql SLA is 24 h
    await deadlines.update_gauge()
    assert service.container.metrics.open_handoffs._value.get() == 1  # "late" awaits sales
    second = RunningService(bootstrap(settings), service.clock)
    try:
        service.clock.now = (ENTERED + timedelta(hours=25)).timestamp()
        # Both instances check at the same moment: one breach between them.
        counts = await asyncio.gather(
            deadlines.check_once(), second.container.deadlines.check_once()
        )
        assert sorted(counts) == [0, 1]
        assert await second.container.deadlines.check_once() == 0
    finally:
        await second.container.close()
    restarted = bootstrap(settings)
    restarted.deadlines.clock = service.clock
    try:
        assert await restarted.deadlines.check_once() == 0  # the deadline is remembered as breached
    finally:
        await restarted.close()
    await wait_for(lambda: drained(settings, len(docs)))
    [breach] = await breaches(settings)
    assert (breach["lead_id"], breach["stage"], breach["priority"]) == ("late", "mql", "hot")
    assert breach["notification_id"] == "late:1:sla_breach"
    assert breach["respond_by"] == "2026-11-11T12:00:00Z"
    assert breach["owner"] == "queue:default"
    # "prompt" was answered in time (recycled: no new deadline).
    rows = await db_fetch(settings, "SELECT lead_id, stage, status FROM handoffs ORDER BY 1, 2")
    assert [tuple(r) for r in rows] == [("late", "mql", "breached"), ("prompt", "mql", "answered")]
    follow_up = service.container.metrics.follow_up_seconds.labels("mql")
    assert follow_up._sum.get() == 2 * 3600


async def test_expired_sla_escalates_and_recycles_when_the_rules_say_so(service, settings):
    async with client_for(service.container) as admin:
        version = (
            await admin.post(
                "/v1/rulesets",
                json=starter_with(escalation_owner="user:head-of-sales", recycle_on_expiry=True),
            )
        ).json()["version"]
        await admin.post(f"/v1/rulesets/{version}/activate")
    docs = _mql_journey("slow", ENTERED)
    await produce(settings, docs)
    await wait_for(lambda: drained(settings, len(docs)))
    service.clock.now = (ENTERED + timedelta(days=2)).timestamp()
    assert await service.container.deadlines.check_once() == 1
    await wait_for(lambda: drained(settings, len(docs)))
    [breach] = await breaches(settings)
    assert breach["owner"] == "user:head-of-sales"
    transitions = values(await read_all(settings, settings.topic_transitions, expect=2))
    assert [(t["to_stage"], t["reason"]) for t in transitions] == [
        ("mql", "threshold"),
        ("recycled", "sla_expired"),
    ]
    assert transitions[1]["occurred_at"] == "2026-11-11T12:00:00Z"
    [(stage, engagement)] = (await lead_stages(settings)).values()
    assert (stage, engagement) == ("recycled", 0)
    assert service.container.metrics.sla_breaches.labels("mql")._value.get() == 1


ROUTING = {
    "default_queue": "rest",
    "queues": {
        "enterprise": {"owners": ["user:erin"]},
        "smb-na": {"owners": ["user:ana", "user:bo", "user:cy"]},
        "rest": {"owners": []},
        "warehouse": {"owners": []},  # the starter's second line sends its leads here
    },
    "rules": [
        {"queue": "enterprise", "when": {"trait": "company.employees", "gte": 500}},
        {"queue": "smb-na", "when": {"trait": "company.country", "in": ["US", "CA"]}},
    ],
}


async def test_routing_round_robin_is_fair_across_instances(settings):
    first = await RunningService(bootstrap(settings)).start()
    second = await RunningService(bootstrap(settings)).start()
    try:
        await wait_for(
            lambda: split_between(first, second, settings.topic_partitions),
            what="the partitions split between both instances",
        )
        async with client_for(first.container) as admin:
            version = (await admin.post("/v1/rulesets", json=starter_with(routing=ROUTING))).json()[
                "version"
            ]
            await admin.post(f"/v1/rulesets/{version}/activate")
        docs = []
        for n in range(30):
            docs += _mql_journey(f"us-{n}", ENTERED)
        docs += _mql_journey("big", ENTERED)
        docs[-4]["traits"]["company"]["employees"] = 900
        docs += _mql_journey("de", ENTERED)
        docs[-4]["traits"]["company"]["country"] = "DE"
        docs[-4]["traits"]["title"] = "Head of IT"
        await produce(settings, docs)
        await wait_for(lambda: drained(settings, len(docs)), timeout=60)
        assert first.container.scorer.batches and second.container.scorer.batches
    finally:
        await second.close()
        await first.close()
    notes = values(await read_all(settings, settings.topic_notifications, expect=32))
    owners = {n["lead_id"]: n["owner"] for n in notes if n["type"] == "promotion"}
    assert owners["big"] == "user:erin"
    assert owners["de"] == "queue:rest"
    spread = Counter(owner for lead, owner in owners.items() if lead.startswith("us-"))
    assert spread == {"user:ana": 10, "user:bo": 10, "user:cy": 10}
    handoff_owners = await db_fetch(settings, "SELECT owner FROM handoffs WHERE lead_id = 'big'")
    assert [r["owner"] for r in handoff_owners] == ["user:erin"]


@pytest.mark.parametrize(
    "query,status",
    [
        ({"since": "2026-11-02T00:00:00Z", "until": "2026-11-01T00:00:00Z"}, 422),
        ({"since": "yesterday"}, 422),
    ],
)
async def test_funnel_rejects_bad_windows(admin_container, query, status):
    async with client_for(admin_container, "viewer") as viewer:
        response = await viewer.get("/v1/funnel", params=query)
        assert response.status_code == status


async def test_a_rejection_carries_its_reason_on_the_recycled_transition(service, settings):
    await seed_leads(settings, {"r-1": "sal"})
    async with client_for(service.container) as admin:
        body = {k: v for k, v in feedback_doc("r-1", "rejected").items() if k != "lead_id"}
        answer = await admin.post("/v1/leads/r-1/feedback", json=body)
    assert answer.status_code == 200, answer.text
    transition = answer.json()["transition"]
    assert (transition["to_stage"], transition["reason_detail"]) == ("recycled", "no budget")
    await wait_for(lambda: drained(settings, 0), what="outbox published")
    [published] = values(await read_all(settings, settings.topic_transitions, expect=1))
    assert published["reason_detail"] == "no budget"


async def test_an_admin_sets_a_stage_by_hand_with_a_reason(service, settings):
    await seed_leads(settings, {"m-1": "lead", "m-2": "sql"})
    async with client_for(service.container) as admin:
        moved = await admin.post(
            "/v1/leads/m-1/stage", json={"stage": "sal", "reason": "met at the trade fair"}
        )
        assert moved.status_code == 200, moved.text
        transition = moved.json()["transition"]
        assert (transition["from_stage"], transition["to_stage"]) == ("lead", "sal")
        assert (transition["reason"], transition["reason_detail"]) == (
            "manual",
            "met at the trade fair",
        )
        assert transition["caused_by"] == "manual:loopback"
        recycled = await admin.post(
            "/v1/leads/m-2/stage", json={"stage": "recycled", "reason": "duplicate of m-1"}
        )
        assert recycled.status_code == 200, recycled.text
        same = await admin.post("/v1/leads/m-1/stage", json={"stage": "sal", "reason": "again"})
        assert (same.status_code, same.json()["error"]) == (409, "illegal_transition")
        unknown = await admin.post("/v1/leads/nobody/stage", json={"stage": "mql", "reason": "x"})
        assert (unknown.status_code, unknown.json()["error"]) == (404, "lead_not_found")
        no_reason = await admin.post("/v1/leads/m-1/stage", json={"stage": "sql"})
        assert no_reason.status_code == 422
        bad_stage = await admin.post("/v1/leads/m-1/stage", json={"stage": "won", "reason": "x"})
        assert bad_stage.status_code == 422
        audit = (await admin.get("/v1/audit")).json()["items"]
    stages = await lead_stages(settings)
    assert stages["m-1"] == ("sal", 40)
    assert stages["m-2"] == ("recycled", 0)  # recycling by hand resets engagement
    assert [(a["action"], a["target"]) for a in audit if a["action"] == "lead.stage"] == [
        ("lead.stage", "m-2"),
        ("lead.stage", "m-1"),
    ]
    await wait_for(lambda: drained(settings, 0), what="outbox published")
    published = values(await read_all(settings, settings.topic_transitions, expect=2))
    assert {(t["lead_id"], t["reason"]) for t in published} == {
        ("m-1", "manual"),
        ("m-2", "manual"),
    }
    # Entering sal by hand is a hand-off like any other: sales is told and a deadline opens.
    notes = values(await read_all(settings, settings.topic_notifications, expect=1))
    assert [(n["lead_id"], n["type"], n["stage"]) for n in notes] == [("m-1", "promotion", "sal")]
    [handoff] = await db_fetch(settings, "SELECT lead_id, status FROM handoffs")
    assert (handoff["lead_id"], handoff["status"]) == ("m-1", "open")


async def test_a_held_lead_shows_why_on_the_lead_and_in_its_history(service, settings):
    from tests.helpers.factories import at, identify, track

    rules = starter_with(
        excluded_when=[
            {"id": "personal-email", "when": {"trait": "email", "ends_with_any": ["@gmail.com"]}}
        ]
    )
    async with client_for(service.container) as admin:
        published = await admin.post("/v1/rulesets", json=rules)
        assert published.status_code == 201, published.text
        version = published.json()["version"]
        assert (await admin.post(f"/v1/rulesets/{version}/activate")).status_code == 200
        docs = [
            identify({"email": "kid@gmail.com", "title": "Student"}, user="held-1", when=at(0)),
            track("Demo Requested", user="held-1", when=at(0, hours=1), message_id="held-demo"),
        ]
        await produce(settings, docs)
        await wait_for(lambda: drained(settings, len(docs)), what="drain")
        lead = (await admin.get("/v1/leads/held-1")).json()
        history = (await admin.get("/v1/leads/held-1/history")).json()
    assert (lead["stage"], lead["held"]) == ("lead", "excluded: personal-email")
    assert [(e["message_id"], e["held"]) for e in history["events"]][-1] == (
        "held-demo",
        "excluded: personal-email",
    )
    assert history["transitions"] == []
