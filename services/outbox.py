"""The outbox relay: publishes committed records to Kafka, in order, and marks them sent.

Records reach the outbox in the same transaction as the score change that caused them, so a
crash between commit and publish loses nothing: the relay publishes them on its next pass.
A crash between publish and marking them sent publishes them again, under the same
deterministic ids, which is the at-least-once contract of the output topics.
"""

from __future__ import annotations

import asyncio
import logging
import time

import orjson
from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError
from sqlalchemy.ext.asyncio import AsyncEngine

from services.db import driver
from services.metrics import Metrics
from services.settings import Settings

log = logging.getLogger(__name__)

# Only one relay publishes at a time across all instances: publishing in id order is what
# keeps each lead's records in order on the topic.
RELAY_LOCK = 0x1EAD0B0C5
# Back-off while the broker is away: quick first retries, then a steady few seconds.
BACKOFF = (0.1, 0.2, 0.5, 1.0, 2.0, 5.0)
# Sent rows are deleted in chunks this size, so cleaning up never holds long locks.
PURGE_CHUNK = 10_000


class OutboxRelay:
    def __init__(
        self, *, settings: Settings, db: AsyncEngine, producer: AIOKafkaProducer, metrics: Metrics
    ) -> None:
        self.settings = settings
        self.db = db
        self.producer = producer
        self.metrics = metrics
        self.wake = asyncio.Event()
        self._last_purge = 0.0
        self._last_gauges = 0.0

    def notify(self) -> None:
        """Called after each committed batch: there is probably something to publish."""
        self.wake.set()

    async def publish_once(self) -> int:
        """Publish one chunk of pending records; returns how many were published."""
        async with self.db.connect() as conn:
            pg = await driver(conn)
            async with pg.transaction():
                if not await pg.fetchval("SELECT pg_try_advisory_xact_lock($1)", RELAY_LOCK):
                    return 0
                rows = await pg.fetch(
                    "SELECT id, topic, key, value, headers::text AS headers FROM outbox "
                    "WHERE sent_at IS NULL ORDER BY id LIMIT $1",
                    self.settings.outbox_batch,
                )
                if not rows:
                    return 0
                futures = []
                for row in rows:
                    headers = None
                    if row["headers"]:
                        headers = [(k, v.encode()) for k, v in orjson.loads(row["headers"])]
                    futures.append(
                        await self.producer.send(
                            row["topic"], row["value"], key=row["key"], headers=headers
                        )
                    )
                await asyncio.gather(*futures)
                await pg.execute(
                    "UPDATE outbox SET sent_at = now() WHERE id = ANY($1::bigint[])",
                    [r["id"] for r in rows],
                )
        for row in rows:
            self.metrics.outbox_published.labels(row["topic"]).inc()
        return len(rows)

    async def drain(self) -> int:
        """Publish until nothing is pending (used on shutdown and by tests)."""
        total = 0
        while published := await self.publish_once():
            total += published
        return total

    async def update_gauges(self) -> None:
        async with self.db.connect() as conn:
            pg = await driver(conn)
            row = await pg.fetchrow(
                "SELECT count(*) AS pending, "
                "coalesce(extract(epoch FROM now() - min(created_at)), 0) AS age "
                "FROM outbox WHERE sent_at IS NULL"
            )
        self.metrics.outbox_pending.set(row["pending"])
        self.metrics.outbox_oldest.set(float(row["age"]))

    async def purge(self) -> None:
        """Forget published records, and scored history, after their retention periods."""
        async with self.db.connect() as conn:
            pg = await driver(conn)
            await pg.execute(
                "DELETE FROM lead_events WHERE id IN (SELECT id FROM lead_events "
                "WHERE occurred_at < now() - make_interval(secs => $1) ORDER BY id LIMIT $2)",
                self.settings.history_retention_days * 86400,
                PURGE_CHUNK,
            )
            await pg.execute(
                "DELETE FROM outbox WHERE id IN (SELECT id FROM outbox WHERE sent_at < now() - "
                "make_interval(secs => $1) ORDER BY id LIMIT $2)",
                self.settings.outbox_retention_hours * 3600,
                PURGE_CHUNK,
            )

    async def run(self, stop: asyncio.Event) -> None:
        """Publish until `stop`, then drain what is left (when the broker is there)."""
        failures = 0
        while not stop.is_set():
            self.wake.clear()
            try:
                published = await self.publish_once()
                failures = 0
                now = time.monotonic()
                if now - self._last_gauges >= 1.0:
                    await self.update_gauges()
                    self._last_gauges = now
                if now - self._last_purge >= 60.0:
                    await self.purge()
                    self._last_purge = now
            except (TimeoutError, KafkaError, OSError) as exc:
                self.metrics.outbox_errors.inc()
                delay = BACKOFF[min(failures, len(BACKOFF) - 1)]
                failures += 1
                log.warning("publishing the outbox failed (%s); retrying in %.1f s", exc, delay)
                await asyncio.sleep(delay)
                continue
            if published >= self.settings.outbox_batch:
                continue  # more is waiting
            waiter = asyncio.ensure_future(self.wake.wait())
            stopper = asyncio.ensure_future(stop.wait())
            await asyncio.wait(
                {waiter, stopper},
                timeout=self.settings.outbox_poll_seconds,
                return_when=asyncio.FIRST_COMPLETED,
            )
            waiter.cancel()
            stopper.cancel()
        try:
            await asyncio.wait_for(self.drain(), timeout=10)
        except (TimeoutError, KafkaError, OSError) as exc:
            log.warning(
                "stopping with records still in the outbox (%s); they go out on restart", exc
            )
