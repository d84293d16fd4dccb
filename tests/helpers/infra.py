"""Real infrastructure for tests: one embedded PostgreSQL and one Apache Kafka per session, a fresh
database and fresh topics per test."""

from __future__ import annotations

import itertools
import os

import asyncpg

from services.outputs import all_topics
from services.runtime.embedded import (
    Broker,
    EmbeddedKafka,
    EmbeddedPostgres,
)
from services.settings import Settings

_names = itertools.count(1)


class Infra:
    def __init__(self, postgres: EmbeddedPostgres, broker: Broker) -> None:
        self.postgres = postgres
        self.broker = broker

    @property
    def is_kafka(self) -> bool:
        return isinstance(self.broker, EmbeddedKafka)

    async def new_database(self) -> str:
        name = f"t{os.getpid()}_{next(_names)}"
        conn = await asyncpg.connect(self.postgres.database_url().replace("+asyncpg", ""))
        try:
            await conn.execute(f'CREATE DATABASE "{name}"')
        finally:
            await conn.close()
        return self.postgres.database_url(name)


async def delete_topics(settings: Settings) -> None:
    """A test's topics go with it: a broker holding thousands of partitions slows down."""
    from aiokafka.admin import AIOKafkaAdminClient

    admin = AIOKafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap)
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        doomed = [t for t in all_topics(settings) if t in existing]
        if doomed:
            await admin.delete_topics(doomed)
    finally:
        await admin.close()


async def fresh_settings(infra: Infra) -> Settings:
    """Settings with a database, topics and a consumer group no one else uses."""
    n = next(_names)
    return Settings(
        kafka_bootstrap=infra.broker.bootstrap,
        database_url=await infra.new_database(),
        topic_events=f"lead-events-{n}",
        topic_transitions=f"lead-status-transitions-{n}",
        topic_account_transitions=f"account-status-transitions-{n}",
        topic_notifications=f"sales-notifications-{n}",
        topic_dlq=f"lead-events-dlq-{n}",
        topic_erasures=f"lead-erasures-{n}",
        topic_feedback=f"sales-feedback-{n}",
        consumer_group=f"leadscore-{n}",
        http_port=0,
        outbox_poll_seconds=0.1,
        kafka_enable_idempotence=infra.is_kafka,
    )
