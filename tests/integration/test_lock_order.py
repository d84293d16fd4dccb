"""Every writer at once over the same few hundred leads: the event consumer, the deadline
watcher working through a backlog of due deadlines, sales feedback over HTTP and on its
topic, and re-scoring jobs. With one lock order (services/pipeline/lead_transaction.py) PostgreSQL
detects no deadlock, no transaction is retried for a lock conflict, and the scores end up
what a pure replay of the events gives."""

from __future__ import annotations

import asyncio
import itertools
import random
import time
from datetime import UTC, datetime

import orjson
from aiokafka import AIOKafkaProducer

from bench.workload import generate
from services.pipeline.lead_transaction import RETRYABLE
from services.runtime.bootstrap import bootstrap
from tests.helpers.database import db_fetch, drained
from tests.helpers.kafka import produce
from tests.helpers.replays import replay
from tests.helpers.service import RunningService, client_for
from tests.helpers.waiting import FakeClock, wait_for
from tests.unit.test_published_contracts import published, validator

# Long enough for every writer to meet every other many times (the issue asks for 30 s).
STRESS_SECONDS = 32
LEADS = 300
EVENTS = 12_000
# Every follow-up deadline of the workload (September to November 2026) is already due.
LATE_NOW = datetime(2027, 1, 1, tzinfo=UTC).timestamp()


def person_key(doc) -> bytes:
    """One partition per person, anonymous (a-N) or identified (u-N): the order in which a
    person's traits arrive is then the same for the service and for the replay (across
    partitions it is not defined, and a backlog behind a re-scoring chunk would show it)."""
    return str(doc.get("userId") or doc.get("anonymousId")).split("-")[-1].encode()


async def deadlocks(settings) -> int:
    [row] = await db_fetch(
        settings, "SELECT deadlocks FROM pg_stat_database WHERE datname = current_database()"
    )
    return int(row["deadlocks"])


def lock_retries(metrics) -> float:
    conflicts = {cls.__name__ for cls in RETRYABLE}
    return sum(
        sample.value
        for metric in metrics.batch_retries.collect()
        for sample in metric.samples
        if sample.name.endswith("_total") and sample.labels.get("error") in conflicts
    )


async def test_every_writer_at_once_takes_locks_in_one_order(settings):
    settings = settings.model_copy(update={"sla_check_seconds": 0.2, "batch_max_records": 500})
    running = await RunningService(bootstrap(settings), FakeClock(LATE_NOW)).start()
    container = running.container
    before = await deadlocks(settings)
    docs = list(
        generate(events=EVENTS, leads=LEADS, seed=11, anonymous_share=0.3, duplicate_share=0.02)
    )
    chunks = [docs[i : i + len(docs) // 40] for i in range(0, len(docs), len(docs) // 40)]
    rnd = random.Random(3)
    feedback_ids = itertools.count()
    sent_feedback: set[str] = set()
    deadline = time.monotonic() + STRESS_SECONDS
    rescores = 0

    async def events() -> None:
        # The stream trickles over the whole window, so scoring meets every other writer.
        for chunk in chunks:
            await produce(settings, chunk, key=person_key)
            await asyncio.sleep(STRESS_SECONDS / len(chunks))

    async def handed_over() -> list[str]:
        rows = await db_fetch(
            settings, "SELECT lead_id FROM leads WHERE stage IN ('mql', 'sal') ORDER BY lead_id"
        )
        return [r["lead_id"] for r in rows]

    def feedback_for(lead_id: str) -> dict[str, str]:
        feedback_id = f"fb-{next(feedback_ids)}"
        sent_feedback.add(feedback_id)
        # Outcomes that move stages without touching scores, so the replay stays comparable.
        return {"feedback_id": feedback_id, "outcome": rnd.choice(["accepted", "qualified"])}

    async def feedback_over_http() -> None:
        async with client_for(container) as client:
            while time.monotonic() < deadline:
                for lead_id in rnd.sample(await handed_over() or ["nobody"], k=1):
                    answer = await client.post(
                        f"/v1/leads/{lead_id}/feedback", json=feedback_for(lead_id)
                    )
                    assert answer.status_code in (200, 404, 409), answer.text
                await asyncio.sleep(0.05)

    async def feedback_on_the_topic() -> None:
        producer = AIOKafkaProducer(bootstrap_servers=settings.kafka_bootstrap)
        await producer.start()
        try:
            while time.monotonic() < deadline:
                leads = await handed_over()
                for lead_id in rnd.sample(leads, k=min(10, len(leads))):
                    doc = {
                        **feedback_for(lead_id),
                        "lead_id": lead_id,
                        "at": "2026-11-30T00:00:00Z",
                    }
                    await producer.send(
                        settings.topic_feedback, orjson.dumps(doc), key=lead_id.encode()
                    )
                await producer.flush()
                await asyncio.sleep(0.2)
        finally:
            await producer.stop()

    async def rescoring() -> None:
        nonlocal rescores
        async with client_for(container) as client:
            while time.monotonic() < deadline:
                started = await client.post("/v1/rulesets/1/activate", params={"rescore": "true"})
                assert started.status_code == 200, started.text
                job = started.json()["rescore_job"]
                while (await client.get(f"/v1/jobs/{job}")).json()["status"] == "running":
                    await asyncio.sleep(0.1)
                rescores += 1

    try:
        await asyncio.gather(events(), feedback_over_http(), feedback_on_the_topic(), rescoring())
        await wait_for(lambda: drained(settings, len(docs)), timeout=120, what="drain")
        # The watcher catches up with the last handoffs.
        await wait_for(
            lambda: _no_open_handoffs(settings), timeout=30, what="every due deadline breached"
        )
        retried = lock_retries(container.metrics)
    finally:
        await running.close()

    assert rescores >= 2
    assert await deadlocks(settings) == before
    assert retried == 0
    # Every deadline breached once, with one notification each.
    [row] = await db_fetch(
        settings,
        "SELECT (SELECT count(*) FROM handoffs WHERE status = 'breached') AS breached, "
        "(SELECT count(*) FROM outbox WHERE record_id LIKE '%:sla_breach') AS notices, "
        "(SELECT count(DISTINCT record_id) FROM outbox WHERE record_id LIKE '%:sla_breach') "
        "AS distinct_notices",
    )
    assert row["breached"] > 50
    assert row["breached"] == row["notices"] == row["distinct_notices"]
    # Every feedback id was recorded once, whichever path it came by.
    stored = await db_fetch(settings, "SELECT feedback_id FROM feedback")
    assert len(stored) == len({r["feedback_id"] for r in stored})
    assert {r["feedback_id"] for r in stored} <= sent_feedback
    applied = await db_fetch(
        settings, "SELECT count(*) AS n FROM feedback WHERE result = 'applied'"
    )
    assert applied[0]["n"] > 10
    # Every record the service wrote validates against the published schemas.
    document = published()
    schema_of = {
        settings.topic_transitions: validator(document, "TransitionRecord"),
        settings.topic_account_transitions: validator(document, "AccountTransitionRecord"),
        settings.topic_notifications: validator(document, "NotificationRecord"),
    }
    account_qualified = validator(document, "AccountQualifiedRecord")
    outbox = await db_fetch(settings, "SELECT topic, value, headers::text AS h FROM outbox")
    assert set(schema_of) <= {r["topic"] for r in outbox} <= {*schema_of, settings.topic_dlq}
    for row in outbox:
        value = orjson.loads(row["value"]) if row["topic"] != settings.topic_dlq else None
        if row["topic"] == settings.topic_dlq:
            validator(document, "DeadLetterHeaders").validate(dict(orjson.loads(row["h"])))
        elif value.get("type") == "account_qualified":
            account_qualified.validate(value)
        else:
            schema_of[row["topic"]].validate(value)
    # Scores are the pure replay's (feedback moved stages, never scores).
    expected = replay(docs)
    rows = await db_fetch(settings, "SELECT lead_id, fit, engagement FROM leads")
    actual = {r["lead_id"]: r for r in rows}
    assert set(actual) == set(expected.ws.leads)
    for lead_id, state in expected.ws.leads.items():
        assert abs(actual[lead_id]["fit"] - state.fit) < 1e-9, lead_id
        assert abs(actual[lead_id]["engagement"] - state.engagement) < 1e-6, lead_id


async def _no_open_handoffs(settings) -> bool:
    rows = await db_fetch(settings, "SELECT count(*) AS n FROM handoffs WHERE status = 'open'")
    return rows[0]["n"] == 0
