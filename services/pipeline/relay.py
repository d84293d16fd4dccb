"""The outbox relay: publishes committed records to Kafka, in order, and marks them sent.

Records reach the outbox in the same transaction as the score change that caused them, so a
crash between commit and publish loses nothing: the relay publishes them on its next pass.
A crash between publish and marking them sent publishes them again, under the same
deterministic ids, which is the at-least-once contract of the output topics.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
import uuid
from datetime import UTC, datetime

import orjson
from aiokafka import AIOKafkaProducer
from aiokafka.errors import (
    CorruptRecordException,
    InvalidTimestampError,
    InvalidTopicError,
    KafkaError,
    MessageSizeTooLargeError,
    PolicyViolationError,
    RecordListTooLargeError,
    RecordTooLargeError,
    TopicAuthorizationFailedError,
    UnsupportedForMessageFormatError,
)
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from services.adapters.postgres import history_partitions, outbox_store
from services.adapters.postgres.db import Connection, HeldConnection, Row, connection, driver
from services.adapters.postgres.errors import DATABASE_ERROR, UNAVAILABLE
from services.metrics import Metrics
from services.settings import Settings

log = logging.getLogger(__name__)

# The outbox has OUTBOX_LANES lanes (by record key, computed by the database: migration
# 0009). One relay at a time publishes a lane, in id order, under the lane's advisory lock:
# that keeps each key's records in order on its topic. The lanes are shared out among the
# live relays (each registers in `outbox_relays` and takes every n-th lane by its rank), so
# relays in several instances publish at the same time, each one chunk per pass with one
# wait for the broker's acknowledgements. While the membership changes two relays may both
# think a lane theirs; the lane lock lets one of them have it.
OUTBOX_LANES = 16
RELAY_LOCK = 0x1EAD0B0C5  # lane n's lock is RELAY_LOCK + n
# Every transaction that adds outbox rows notifies this channel at its commit
# (outbox_store.enqueue); each relay listens, so records for its lanes that another instance wrote
# go out at once instead of at the next poll.
CHANNEL = "leadscore_outbox"
# A relay counts as live while it registered this recently; it registers every second.
RELAY_TTL_SECONDS = 5
# A lane whose oldest pending record waited this long is taken by any relay that can: its
# owner may be dead (killed before its registration expired) or stuck.
ORPHANED_SECONDS = 2.0
# Back-off while the broker is away: quick first retries, then a steady few seconds.
BACKOFF = (0.1, 0.2, 0.5, 1.0, 2.0, 5.0)
# Sent rows are deleted in chunks this size, so cleaning up never holds long locks.
PURGE_CHUNK = 10_000
# The broker (or the client) refuses these records for good: retrying them would block every
# record behind them forever, so they are set aside with their reason instead.
REFUSED_FOR_GOOD = (
    MessageSizeTooLargeError,
    RecordListTooLargeError,
    RecordTooLargeError,
    CorruptRecordException,
    InvalidTimestampError,
    InvalidTopicError,
    PolicyViolationError,
    TopicAuthorizationFailedError,
    UnsupportedForMessageFormatError,
    TypeError,
    ValueError,
)
# What the relay waits out, with back-off: the broker or the database is away.
TRANSIENT = (KafkaError, *UNAVAILABLE)


class PublishFailed(Exception):
    """Some records of a chunk could not be published now; they stay pending."""


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
        # Unique per process; the rank among live relays decides which lanes are this one's.
        self.relay_id = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self._lanes: list[int] = []
        self._lanes_at = 0.0
        self._orphaned: list[int] = []
        self._orphaned_at = 0.0
        self._listener: AsyncConnection | None = None
        self._listen_tried = 0.0
        self.held = HeldConnection(db)

    def notify(self) -> None:
        """Called after each committed batch: there is probably something to publish."""
        self.wake.set()

    async def my_lanes(self, pg: Connection) -> list[int]:
        """The lanes this relay publishes: every n-th by its rank among the n live relays
        (registered within RELAY_TTL_SECONDS); refreshed once a second."""
        now = time.monotonic()
        if now - self._lanes_at < 1.0 and self._lanes:
            return self._lanes
        live = await outbox_store.register_relay(pg, self.relay_id, RELAY_TTL_SECONDS)
        # The statement does not see its own insert (one snapshot): this relay is added here.
        ids = sorted({*live, self.relay_id})
        rank, count = ids.index(self.relay_id), len(ids)
        self._lanes = [lane for lane in range(OUTBOX_LANES) if lane % count == rank]
        self._lanes_at = now
        return self._lanes

    async def orphaned_lanes(self, pg: Connection, mine: list[int], *, ask: bool) -> list[int]:
        """Other relays' lanes whose oldest pending record waited past ORPHANED_SECONDS (their
        relay is gone or stuck). With `ask` false, the last answer: the question looks at
        every lane, and the relay's loop asks it once a second, not on every publish."""
        if ask:
            self._orphaned = await outbox_store.waiting_lanes(
                pg, OUTBOX_LANES, besides=mine, older_than=ORPHANED_SECONDS
            )
            self._orphaned_at = time.monotonic()
        return [n for n in self._orphaned if n not in mine]

    async def publish_once(self, *, look_for_orphans: bool = True) -> int:
        """Publish one chunk of this relay's lanes (those no other relay holds right now),
        in id order; returns how many records were published or set aside.

        Records the broker refuses for good are marked failed and counted; the first
        record that fails for now (broker away) ends the chunk: it and everything after it
        stay pending (those already sent go out again under the same ids, which the output
        contract allows) and PublishFailed tells the loop to back off.
        """
        # Its own connection from pass to pass: a pass follows every committed batch, and a
        # connection from the pool costs three round trips more each time (HeldConnection).
        async with self.held.use() as pg:
            lanes = await self.my_lanes(pg)
            lanes = lanes + await self.orphaned_lanes(pg, lanes, ask=look_for_orphans)
            async with pg.transaction():
                held = await outbox_store.try_lock_lanes(pg, lanes, RELAY_LOCK)
                if not held:
                    return 0
                rows = await outbox_store.pending(pg, held, self.settings.outbox_batch)
                if not rows:
                    return 0
                results = await self._send_in_order(rows)
                sent: list[int] = []
                refused: list[tuple[int, str, BaseException]] = []
                retry: BaseException | None = None
                for row, result in zip(rows, results, strict=True):
                    if not isinstance(result, BaseException):
                        sent.append(row["id"])
                    elif isinstance(result, REFUSED_FOR_GOOD):
                        refused.append((row["id"], row["topic"], result))
                    else:
                        retry = result
                        break
                await outbox_store.mark_sent(pg, sent)
                if refused:
                    await outbox_store.mark_failed(
                        pg,
                        [r[0] for r in refused],
                        [f"{type(r[2]).__name__}: {r[2]}"[:500] for r in refused],
                    )
        published = set(sent)  # a chunk holds thousands of rows: no list lookups per row
        for row in rows:
            if row["id"] in published:
                self.metrics.outbox_published.labels(row["topic"]).inc()
        for _, topic, error in refused:
            log.error(
                "the broker refused an outbox record for good (%s); set aside, the rest flows on",
                error,
                extra={"topic": topic},
            )
            self.metrics.outbox_failed.labels(topic, type(error).__name__).inc()
        if retry is not None:
            raise PublishFailed(f"{type(retry).__name__}: {retry}") from retry
        return len(sent) + len(refused)

    async def join(self) -> list[int]:
        """Register now (not at the next refresh) and return this relay's lanes."""
        self._lanes_at = 0.0
        async with connection(self.db) as pg:
            return await self.my_lanes(pg)

    async def leave(self) -> None:
        """Unregister, so the other relays take this one's lanes at once (on shutdown)."""
        async with connection(self.db) as pg:
            await outbox_store.unregister_relay(pg, self.relay_id)

    async def _send_in_order(self, rows: list[Row]) -> list[object]:
        """Hand the records to the producer one after another (their order on each partition
        is the order of the ids), then wait for every acknowledgement. Returns, per record,
        None or the exception that kept it off the broker; records after a failure to hand
        over are not tried (they stay pending)."""
        futures: list[asyncio.Future[object] | BaseException] = []
        for row in rows:
            headers = None
            if row["headers"]:
                headers = [(k, v.encode()) for k, v in orjson.loads(row["headers"])]
            try:
                futures.append(
                    await self.producer.send(
                        row["topic"], row["value"], key=row["key"], headers=headers
                    )
                )
            except REFUSED_FOR_GOOD as exc:  # e.g. too large: the client refuses at once
                futures.append(exc)
            except TRANSIENT as exc:
                futures.append(exc)
                break
        waiting = [f for f in futures if not isinstance(f, BaseException)]
        acknowledged = iter(await asyncio.gather(*waiting, return_exceptions=True))
        results: list[object] = [
            f if isinstance(f, BaseException) else next(acknowledged) for f in futures
        ]
        return results + [TimeoutError("not handed over")] * (len(rows) - len(results))

    async def drain(self) -> int:
        """Publish until nothing is pending (used on shutdown and by tests)."""
        total = 0
        while published := await self.publish_once():
            total += published
        return total

    async def update_gauges(self) -> None:
        """Pending and failed records, read from the table (true during a broker outage too)."""
        async with connection(self.db) as pg:
            backlog = await outbox_store.backlog(pg)
        self.metrics.outbox_pending.set(backlog.pending)
        self.metrics.outbox_oldest.set(backlog.oldest_seconds)
        self.metrics.outbox_failed_records.set(backlog.failed)

    async def purge(self) -> None:
        """Forget published records, and scored history, after their retention periods."""
        async with connection(self.db) as pg:
            try:
                # Whole months of history at once (postgres/history_partitions.py).
                await history_partitions.maintain(
                    pg,
                    now=datetime.now(UTC),
                    retention_days=self.settings.history_retention_days,
                    chunk=PURGE_CHUNK,
                )
            except UNAVAILABLE:
                raise
            except DATABASE_ERROR as exc:
                # A lock not granted in time (a long report), say: the next run tries again.
                self.metrics.loop_errors.labels("history_months", type(exc).__name__).inc()
                log.warning("keeping the months of history failed (%s); trying again later", exc)
            await outbox_store.purge(
                pg, retention_seconds=self.settings.outbox_retention_hours * 3600, chunk=PURGE_CHUNK
            )

    async def listen(self) -> None:
        """Hold a connection that LISTENs on CHANNEL and wakes the relay; without one (the
        database away) the relay polls every `outbox_poll_seconds`, and tries again later."""
        if self._listener is not None and not self._listener.closed:
            pg = await driver(self._listener)
            if not pg.is_closed():
                return
            await self._stop_listening()
        if time.monotonic() - self._listen_tried < 5.0:
            return
        self._listen_tried = time.monotonic()
        try:
            self._listener = await self.db.connect()
            pg = await driver(self._listener)
            await pg.add_listener(CHANNEL, lambda *_: self.wake.set())
        except (OSError, *UNAVAILABLE) as exc:
            log.warning("cannot listen for outbox commits (%s); polling meanwhile", exc)
            await self._stop_listening()

    async def _stop_listening(self) -> None:
        if self._listener is not None:
            with contextlib.suppress(Exception):
                await self._listener.close()
            self._listener = None

    async def run(self, stop: asyncio.Event) -> None:
        """Publish until `stop`, then drain what is left (when the broker is there)."""
        try:
            await self._run(stop)
        finally:
            await self._stop_listening()
            await self.held.release()

    async def _run(self, stop: asyncio.Event) -> None:
        failures = 0
        while not stop.is_set():
            self.wake.clear()
            now = time.monotonic()
            try:
                await self.listen()
                # Gauges first, so they stay true while publishing fails.
                if now - self._last_gauges >= 1.0:
                    self._last_gauges = now
                    await self.update_gauges()
                published = await self.publish_once(look_for_orphans=now - self._orphaned_at >= 1.0)
                failures = 0
                if now - self._last_purge >= 60.0:
                    self._last_purge = now
                    await self.purge()
            except (PublishFailed, *TRANSIENT) as exc:
                self.metrics.outbox_errors.inc()
                self.metrics.loop_errors.labels("relay", type(exc).__name__).inc()
                delay = BACKOFF[min(failures, len(BACKOFF) - 1)]
                failures += 1
                log.warning("publishing the outbox failed (%s); retrying in %.1f s", exc, delay)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), timeout=delay)
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
            await self.leave()
        except (PublishFailed, *TRANSIENT) as exc:
            log.warning(
                "stopping with records still in the outbox (%s); they go out on restart", exc
            )
