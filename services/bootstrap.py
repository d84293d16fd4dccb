"""One place that builds the object graph: for the process, the HTTP app and the tests."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from sqlalchemy.ext.asyncio import AsyncEngine

from scoring_service.consumer import EventConsumer
from services import db, kafka, rulesets
from services.feedback import FeedbackConsumer
from services.jobs import Jobs
from services.metrics import Metrics
from services.outbox import OutboxRelay
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
    scorer: EventConsumer
    relay: OutboxRelay
    jobs: Jobs
    feedback: FeedbackConsumer
    sla: SlaWatcher
    supervisor: Supervisor
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
        loops = {
            "consumer": self.scorer.run,
            "feedback": self.feedback.run,
            "sla": self.sla.run,
            "relay": self.relay.run,
        }
        return [
            asyncio.create_task(
                self.supervisor.supervise(name, lambda body=body: body(stop), stop), name=name
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
    scorer = EventConsumer(
        settings=settings, db=engine, consumer=consumer, metrics=metrics, on_commit=relay.notify
    )
    feedback = FeedbackConsumer(
        settings=settings,
        db=engine,
        consumer=kafka.make_consumer(settings, group_suffix="-feedback"),
        metrics=metrics,
        on_commit=relay.notify,
    )
    sla = SlaWatcher(
        settings=settings, db=engine, scorer=scorer, metrics=metrics, on_commit=relay.notify
    )
    return Container(
        settings,
        engine,
        producer,
        consumer,
        metrics,
        scorer,
        relay,
        Jobs(engine),
        feedback,
        sla,
        Supervisor(metrics),
    )
