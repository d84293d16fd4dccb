"""One place that builds the object graph: for the process, the HTTP app and the tests."""

from __future__ import annotations

from functools import partial

from aiokafka import AIOKafkaProducer
from sqlalchemy.ext.asyncio import AsyncEngine

from scoring_service.suppression import Suppression
from services.adapters import kafka
from services.adapters.postgres import db
from services.adapters.secrets import Vault, suppression_secret
from services.app.container import Container
from services.app.learned_scores import retrain_on_schedule
from services.app.sessions import ConsoleSessions
from services.auth import parse_tokens
from services.metrics import Metrics
from services.pipeline.active_rules import ActiveRules
from services.pipeline.consumer import TopicConsumer
from services.pipeline.deadlines import DeadlineWatcher
from services.pipeline.erasures import Erasures
from services.pipeline.event_handler import EventHandler
from services.pipeline.feedback import FeedbackHandler
from services.pipeline.jobs import Jobs
from services.pipeline.lead_transaction import LeadWriter
from services.pipeline.relay import OutboxRelay
from services.pipeline.supervisor import Supervisor
from services.pipeline.webhooks import Dispatcher
from services.settings import Settings

__all__ = ["Container", "bootstrap"]


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
    # Each consumer lane, the feedback consumer and the outbox relay keep a connection of
    # their own (HeldConnection); the pool's usual five stay for everything else.
    engine = engine or db.create_engine(
        settings.database_url.get_secret_value(), pool_size=5 + settings.consumer_lanes + 2
    )
    producer = producer or kafka.make_producer(settings)
    consumer = kafka.make_consumer(settings)
    metrics = metrics or Metrics()
    relay = OutboxRelay(settings=settings, db=engine, producer=producer, metrics=metrics)
    vault = Vault(settings)
    webhooks = Dispatcher(settings=settings, db=engine, metrics=metrics, vault=vault)

    def committed() -> None:
        """After every commit: the relay and the webhook dispatcher may have work."""
        relay.notify()
        webhooks.notify()

    # One active rule set and one writer for everything that changes leads.
    rules = ActiveRules(
        on_change=metrics.ruleset_version.set,
        on_unusable=lambda unusable: metrics.ruleset_unusable.set(int(unusable)),
    )
    writer = LeadWriter(
        db=engine, rules=rules, settings=settings, metrics=metrics, on_commit=committed
    )
    suppression = Suppression(suppression_secret(settings))
    scorer = TopicConsumer(
        handler=EventHandler(settings, suppression),
        writer=writer,
        consumer=consumer,
        lanes=settings.consumer_lanes,
    )
    feedback = TopicConsumer(
        handler=FeedbackHandler(settings, metrics),
        writer=writer,
        consumer=kafka.make_consumer(settings, group_suffix="-feedback"),
    )
    secret = settings.api_tokens.get_secret_value() if settings.api_tokens else None
    tokens = parse_tokens(secret)
    container = Container(
        settings=settings,
        db=engine,
        producer=producer,
        consumer=consumer,
        metrics=metrics,
        rules=rules,
        writer=writer,
        scorer=scorer,
        relay=relay,
        webhooks=webhooks,
        vault=vault,
        jobs=Jobs(engine),
        feedback=feedback,
        deadlines=DeadlineWatcher(settings=settings, writer=writer),
        erasures=Erasures(settings=settings, writer=writer, suppression=suppression),
        suppression=suppression,
        supervisor=Supervisor(metrics),
        tokens=tokens,
        sessions=ConsoleSessions(
            engine,
            tokens,
            idle_seconds=settings.console_idle_minutes * 60,
            lifetime_seconds=settings.console_session_hours * 3600,
        ),
    )
    if settings.retrain_every_days is not None:
        container.scheduled["retraining"] = partial(retrain_on_schedule, container)
    return container
