"""The events topic deleted under a running service and created again (as when a broker comes
back without its log): the group must be assigned the new topic's partitions and score what
is sent to it, without waiting for a routine metadata refresh."""

from __future__ import annotations

from aiokafka.admin import AIOKafkaAdminClient

from bench.workload import generate, lead_key
from services.adapters import kafka
from services.runtime.bootstrap import bootstrap
from tests.helpers.database import db_fetch
from tests.helpers.kafka import produce
from tests.helpers.service import RunningService
from tests.helpers.waiting import wait_for


async def scored(settings, message_ids: set[str]) -> bool:
    rows = await db_fetch(settings, "SELECT message_id FROM lead_events")
    return message_ids <= {r["message_id"] for r in rows}


async def test_a_topic_created_again_is_assigned_and_scored(settings):
    before, after = (list(generate(events=300, leads=30, seed=s)) for s in (21, 22))
    running = await RunningService(bootstrap(settings)).start()
    try:
        await produce(settings, before, key=lead_key)
        await wait_for(lambda: scored(settings, {d["messageId"] for d in before}), timeout=60)
        admin = AIOKafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap)
        await admin.start()
        try:
            await admin.delete_topics([settings.topic_events])
        finally:
            await admin.close()
        consumer = running.container.consumer
        # The group notices the topic is gone and is assigned nothing of it.
        await wait_for(lambda: not consumer.assignment(), timeout=60, what="assignment dropped")
        await kafka.ensure_topics(settings)  # as the producers' side would
        await produce(settings, after, key=lead_key)
        await wait_for(
            lambda: scored(settings, {d["messageId"] for d in after}),
            timeout=60,  # aiokafka alone would not look again for five minutes
            what="the events sent to the topic created again",
        )
        assert len(consumer.assignment()) == settings.topic_partitions
    finally:
        await running.close()
