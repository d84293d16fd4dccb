"""One place that builds the object graph: for the process, the HTTP app and the tests."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from functools import partial

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from sqlalchemy.ext.asyncio import AsyncEngine

from schemas.records import FeedbackRecord
from scoring_service.intake import Event
from services import db, kafka, rulesets
from services.auth import Principal, parse_tokens
from services.consumer import EventHandler, TopicConsumer
from services.feedback import FeedbackBatch, FeedbackHandler
from services.jobs import Jobs
from services.lead_transaction import LeadWriter
from services.metrics import Metrics
from services.outbox import OutboxRelay
from services.rulesets import ActiveRules
from services.sessions import ConsoleSessions
from services.settings import Settings
from services.sla import SlaWatcher
from services.supervisor import Supervisor

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
    jobs: Jobs
    feedback: TopicConsumer[FeedbackRecord, FeedbackBatch]
    sla: SlaWatcher
    supervisor: Supervisor
    # The configured API tokens ({sha256: who}); empty: the API trusts loopback only.
    tokens: dict[str, Principal]
    sessions: ConsoleSessions
    started: bool = field(default=False)

    async def start(self) -> None:
        """Migrate, make sure topics and a rule set exist, connect the Kafka clients."""
        await db.migrate(self.db)
        async with self.db.connect() as conn:
            await rulesets.ensure_starter(await db.driver(conn))
        await kafka.ensure_topics(self.settings)
        await self.producer.start()
        self.scorer.subscribe()
        self.feedback.subscribe()
        await self.consumer.start()
        await self.feedback.consumer.start()
        self.started = True

    def run(self, stop: asyncio.Event) -> list[asyncio.Task[None]]:
        """The instance's loops, until `stop`: event consumer, feedback consumer, deadline
        watcher, and last the outbox relay (the HTTP API is served separately)."""
        loops: dict[str, Callable[[asyncio.Event], Awaitable[None]]] = {
            "consumer": self.scorer.run,
            "feedback": self.feedback.run,
            "sla": self.sla.run,
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
        if self.started:
            await self.feedback.consumer.stop()
            await self.consumer.stop()
            await self.producer.stop()
        await self.db.dispose()


def bootstrap(
    settings: Settings,
    *,
    engine: AsyncEngine | None = None,
    producer: AIOKafkaProducer | None = None,
    metrics: Metrics | None = None,
) -> Container:
    """Build (without connecting) the service for `settings`: the broker and database must be
    configured by now (the entry point fills them in with embedded ones when unset)."""
    if settings.kafka_bootstrap is None or settings.database_url is None:
        raise ValueError("bootstrap() needs kafka_bootstrap and database_url")
    engine = engine or db.create_engine(settings.database_url.get_secret_value())
    producer = producer or kafka.make_producer(settings)
    consumer = kafka.make_consumer(settings)
    metrics = metrics or Metrics()
    relay = OutboxRelay(settings=settings, db=engine, producer=producer, metrics=metrics)
    # One active rule set and one writer for everything that changes leads.
    rules = ActiveRules(on_change=metrics.ruleset_version.set)
    writer = LeadWriter(
        db=engine, rules=rules, settings=settings, metrics=metrics, on_commit=relay.notify
    )
    scorer = TopicConsumer(handler=EventHandler(settings), writer=writer, consumer=consumer)
    feedback = TopicConsumer(
        handler=FeedbackHandler(settings, metrics),
        writer=writer,
        consumer=kafka.make_consumer(settings, group_suffix="-feedback"),
    )
    secret = settings.api_tokens.get_secret_value() if settings.api_tokens else None
    tokens = parse_tokens(secret)
    return Container(
        settings=settings,
        db=engine,
        producer=producer,
        consumer=consumer,
        metrics=metrics,
        rules=rules,
        writer=writer,
        scorer=scorer,
        relay=relay,
        jobs=Jobs(engine),
        feedback=feedback,
        sla=SlaWatcher(settings=settings, writer=writer),
        supervisor=Supervisor(metrics),
        tokens=tokens,
        sessions=ConsoleSessions(
            engine,
            tokens,
            idle_seconds=settings.console_idle_minutes * 60,
            lifetime_seconds=settings.console_session_hours * 3600,
        ),
    )
