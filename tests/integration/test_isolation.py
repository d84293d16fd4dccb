"""Faults inside a batch stay with the records that caused them: an event whose processing
raises, a record PostgreSQL refuses, a record the broker refuses, a DLQ copy too large."""

from __future__ import annotations

import orjson
from aiokafka.errors import MessageSizeTooLargeError

import services.pipeline.event_handler as event_handler_module
from bench.workload import generate, lead_key
from scoring_service import intake
from tests.helpers.database import db_fetch, drained
from tests.helpers.factories import at, identify, track
from tests.helpers.kafka import produce, read_all
from tests.helpers.replays import replay
from tests.helpers.waiting import wait_for


async def scored_leads(settings) -> set[str]:
    return {r["lead_id"] for r in await db_fetch(settings, "SELECT lead_id FROM leads")}


async def dlq_codes(settings, expect: int) -> list[str]:
    records = await read_all(settings, settings.topic_dlq, expect=expect)
    return sorted(dict(r.headers)["error"].decode() for r in records)


async def test_an_event_whose_scoring_raises_goes_to_the_dlq_and_the_batch_goes_on(
    service, settings, monkeypatch
):
    real = event_handler_module.score_event

    def failing_for_boom(ws, engine, event, *, now):
        if event.message_id == "boom":
            raise ZeroDivisionError("injected fault")
        return real(ws, engine, event, now=now)

    monkeypatch.setattr(event_handler_module, "score_event", failing_for_boom)
    docs = [track("Email Replied", user=f"u{i}", when=at(0)) for i in range(20)]
    docs.insert(7, track("Email Replied", user="victim", when=at(0), message_id="boom"))
    await produce(settings, docs, key=lambda _: b"one-partition")
    await wait_for(lambda: drained(settings, len(docs)), what="drain")
    assert await scored_leads(settings) == {f"u{i}" for i in range(20)}
    [record] = await read_all(settings, settings.topic_dlq, expect=1)
    headers = {k: v.decode() for k, v in record.headers}
    assert headers["error"] == "processing_error"
    assert headers["error_detail"].startswith("ZeroDivisionError")
    assert service.container.metrics.dlq.labels("processing_error")._value.get() == 1


async def test_a_record_the_database_refuses_is_isolated_by_splitting_the_batch(
    service, settings, monkeypatch
):
    """Intake is made to let NUL through (as a gap in validation would): PostgreSQL refuses
    the batch, and halving finds the one record."""
    real = intake._structure_problem
    monkeypatch.setattr(intake, "_structure_problem", lambda doc: None)
    docs = [identify(user=f"u{i}", when=at(0), traits={"title": "VP"}) for i in range(30)]
    docs.insert(11, identify(user="nul", when=at(0), traits={"title": "a\x00b"}))
    await produce(settings, docs, key=lambda _: b"one-partition")
    await wait_for(lambda: drained(settings, len(docs)), what="drain")
    monkeypatch.setattr(intake, "_structure_problem", real)
    assert await scored_leads(settings) == {f"u{i}" for i in range(30)}
    assert await dlq_codes(settings, 1) == ["processing_error"]
    retries = service.container.metrics.batch_retries
    assert (
        sum(s.value for m in retries.collect() for s in m.samples if s.name.endswith("_total")) > 0
    )


async def test_the_outbox_sets_aside_a_record_the_broker_refuses_and_the_rest_flows(
    service, settings
):
    """A 3 MiB record (over the producer's limit) ahead of ordinary ones in the outbox."""
    await wait_for(lambda: drained(settings, 0))
    await db_fetch(
        settings,
        "INSERT INTO outbox (topic, key, value, record_id) VALUES ($1, 'k', $2, 'huge')",
        settings.topic_transitions,
        b"x" * (3 * 1024 * 1024),
    )
    docs = list(generate(events=1000, leads=30, seed=3))
    expected = replay(docs).transitions
    assert len(expected) >= 5  # the workload makes records to publish
    await produce(settings, docs, key=lead_key)
    await wait_for(lambda: drained(settings, len(docs)), what="published around it")
    [failed] = await db_fetch(
        settings, "SELECT record_id, error FROM outbox WHERE failed_at IS NOT NULL"
    )
    assert failed["record_id"] == "huge" and "TooLarge" in failed["error"]
    published = await read_all(settings, settings.topic_transitions, expect=len(expected))
    assert {orjson.loads(r.value)["transition_id"] for r in published} == {
        t["transition_id"] for t in expected
    }
    metrics = service.container.metrics
    await wait_for(lambda: metrics.outbox_failed_records._value.get() == 1, what="gauge")
    assert metrics.outbox_pending._value.get() == 0


async def test_a_dlq_copy_over_the_record_limit_is_stored_truncated(service, settings):
    big = b'{"type": "track", "pad": "' + b"x" * (1200 * 1024) + b'"}'
    # Kafka refuses records over 1 MiB by default; the input topic here was set to take
    # them, the output topics were not (the service's max_record_bytes stays below 1 MiB).
    await allow_large_records(settings, settings.topic_events, 2 * 1024 * 1024)

    async def accepted() -> bool:  # the new limit reaches the partitions a moment later
        try:
            await produce(settings, [big])
            return True
        except MessageSizeTooLargeError:
            return False

    await wait_for(accepted, what="the topic to take a 1.2 MB record")
    [record] = await read_all(settings, settings.topic_dlq, expect=1)
    headers = {k: v.decode() for k, v in record.headers}
    assert headers["error"] == "too_large"
    assert headers["truncated_from_bytes"] == str(len(big))
    assert len(record.value) < settings.max_record_bytes
    assert big.startswith(record.value)


async def allow_large_records(settings, topic: str, max_bytes: int) -> None:
    from aiokafka.admin import AIOKafkaAdminClient
    from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType

    admin = AIOKafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap)
    await admin.start()
    try:
        await admin.alter_configs(
            [ConfigResource(ConfigResourceType.TOPIC, topic, {"max.message.bytes": str(max_bytes)})]
        )
    finally:
        await admin.close()
