"""What a running instance holds: the clients, the loops and the shared objects the use
cases, the HTTP API and the console work with. `services.runtime.bootstrap` builds it."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from functools import partial

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from sqlalchemy.ext.asyncio import AsyncEngine

from schemas.records import FeedbackRecord
from scoring_service.intake import Event
from scoring_service.suppression import Suppression
from services.adapters import kafka
from services.adapters.postgres import db, rule_set_store
from services.adapters.postgres.db import connection
from services.adapters.secrets import Vault
from services.app.sessions import ConsoleSessions
from services.auth import Principal
from services.metrics import Metrics
from services.pipeline.active_rules import ActiveRules
from services.pipeline.consumer import TopicConsumer
from services.pipeline.deadlines import DeadlineWatcher
from services.pipeline.erasures import Erasures
from services.pipeline.feedback import FeedbackBatch
from services.pipeline.jobs import Jobs
from services.pipeline.lead_transaction import LeadWriter
from services.pipeline.relay import OutboxRelay
from services.pipeline.supervisor import Supervisor
from services.pipeline.webhooks import Dispatcher
from services.settings import Settings

log = logging.getLogger(__name__)


@dataclass
class Container:
    """Everything a running instance holds; `start()` connects, `close()` lets go."""

    settings: Settings
    db: AsyncEngine
    producer: AIOKafkaProducer
    consumer: AIOKafkaConsumer
    metrics: Metrics
    rules: ActiveRules
    writer: LeadWriter
    scorer: TopicConsumer[Event, None]
    relay: OutboxRelay
    # Deliveries to webhook endpoints and CRM writers, and the key their secrets open with.
    webhooks: Dispatcher
    vault: Vault
    jobs: Jobs
    feedback: TopicConsumer[FeedbackRecord, FeedbackBatch]
    deadlines: DeadlineWatcher
    # Erasure requests carried out, and the keyed hashes erased people are known again by.
    erasures: Erasures
    suppression: Suppression
    supervisor: Supervisor
    # The configured API tokens ({sha256: who}); empty: the API trusts loopback only.
    tokens: dict[str, Principal]
    sessions: ConsoleSessions
    # Loops that run only when configured (the training schedule), by name; registered by
    # `services.runtime.bootstrap`, run beside the others.
    scheduled: dict[str, Callable[[asyncio.Event], Awaitable[None]]] = field(default_factory=dict)
    started: bool = field(default=False)

    async def start(self) -> None:
        """Migrate, make sure topics and a rule set exist, connect the Kafka clients."""
        await db.migrate(self.db)
        async with connection(self.db) as pg:
            await rule_set_store.ensure_starter(pg)
            # Load the active version now: one that cannot run shows on /readyz from the
            # start (the loops then wait for another version; the process stays up).
            with contextlib.suppress(rule_set_store.VersionUnusable):
                async with pg.transaction():
                    await self.rules.engine(pg)
        await kafka.ensure_topics(self.settings)
        await self.producer.start()
        self.scorer.subscribe()
        self.feedback.subscribe()
        await self.consumer.start()
        await self.feedback.consumer.start()
        self.started = True

    def run(self, stop: asyncio.Event) -> list[asyncio.Task[None]]:
        """The instance's loops, until `stop`: event consumer, feedback consumer, deadline
        watcher, erasures, webhook dispatcher, the configured schedules, and last the outbox
        relay (the HTTP API is served separately)."""
        loops: dict[str, Callable[[asyncio.Event], Awaitable[None]]] = {
            "consumer": self.scorer.run,
            "feedback": self.feedback.run,
            "deadlines": self.deadlines.run,
            "erasures": self.erasures.run,
            "webhooks": self.webhooks.run,
            **self.scheduled,
            "relay": self.relay.run,
        }
        return [
            asyncio.create_task(
                self.supervisor.supervise(name, partial(body, stop), stop), name=name
            )
            for name, body in loops.items()
        ]

    async def close(self) -> None:
        await self.jobs.close()
        await self.scorer.release_connections()
        await self.feedback.release_connections()
        await self.relay.held.release()
        if self.started:
            await self.feedback.consumer.stop()
            await self.consumer.stop()
            await self.producer.stop()
        await self.db.dispose()
