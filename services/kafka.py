"""Kafka clients (aiokafka) and topic set-up."""

from __future__ import annotations

import logging

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import TopicAlreadyExistsError

from services.settings import Settings

log = logging.getLogger(__name__)


async def ensure_topics(settings: Settings) -> None:
    """Create the topics the service uses; the broker would auto-create them with the wrong
    partition count otherwise."""
    assert settings.kafka_bootstrap
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap)
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        missing = [t for t in settings.all_topics() if t not in existing]
        if missing:
            try:
                await admin.create_topics(
                    [NewTopic(t, settings.topic_partitions, 1) for t in missing]
                )
            except TopicAlreadyExistsError:
                pass  # another instance was quicker
            log.info("created topics %s with %d partitions", missing, settings.topic_partitions)
    finally:
        await admin.close()


def make_producer(settings: Settings) -> AIOKafkaProducer:
    return AIOKafkaProducer(
        bootstrap_servers=settings.kafka_bootstrap,
        acks="all",
        linger_ms=settings.producer_linger_ms,
        enable_idempotence=settings.kafka_enable_idempotence,
        # One megabyte per partition batch: a full outbox batch leaves in a few requests.
        max_batch_size=1024 * 1024,
        request_timeout_ms=10_000,
    )


def make_consumer(settings: Settings, *, group_suffix: str = "") -> AIOKafkaConsumer:
    return AIOKafkaConsumer(
        bootstrap_servers=settings.kafka_bootstrap,
        group_id=settings.consumer_group + group_suffix,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        # Fetch enough per partition to fill a batch in one round trip.
        max_partition_fetch_bytes=4 * 1024 * 1024,
        fetch_max_wait_ms=max(settings.batch_timeout_ms, 1),
        # A batch must finish well within this, or the group evicts the consumer.
        max_poll_interval_ms=300_000,
        session_timeout_ms=10_000,
        heartbeat_interval_ms=3_000,
    )
