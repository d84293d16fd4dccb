"""The consumer: reads `lead-events` in batches and scores each batch in one transaction.

Commit order, per batch:
  1. one database transaction: partition offsets locked and checked, dedup keys, lead and
     account state, transitions, outbox rows (records and DLQ), new partition offsets;
  2. the outbox relay is woken and publishes what the transaction wrote;
  3. Kafka offsets are committed, best effort: the database offsets are the truth and a
     consumer seeks to them whenever it is assigned a partition.
Offsets never move ahead of durable work, so a crash at any point loses nothing, and the
offset check in step 1 fences a consumer that lost its partitions in a rebalance.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import asyncpg
from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener, TopicPartition
from aiokafka.errors import CommitFailedError, IllegalStateError, KafkaError
from aiokafka.structs import ConsumerRecord
from sqlalchemy.ext.asyncio import AsyncEngine

from scoring_service import store
from scoring_service.engine import Effects, Engine
from scoring_service.intake import Event, Rejection, parse_event
from scoring_service.pipeline import Workspace, ids_to_load, score_batch
from services.db import driver
from services.metrics import Metrics
from services.rulesets import RULESET_LOCK, load_version
from services.settings import Settings

log = logging.getLogger(__name__)

# Lock conflicts between instances resolve by rolling back and trying again.
RETRYABLE = (
    asyncpg.DeadlockDetectedError,
    asyncpg.SerializationError,
    asyncpg.UniqueViolationError,
)
# A partition whose end lies this far before our stored offset lost its log (see
# EventConsumer._forget_lost_log).
LOG_RESET_GAP = 100_000
# Back-off while the database is away: start fast, settle at a few seconds.
RETRY_DELAYS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0)


@dataclass
class BatchReport:
    scored: int = 0
    duplicates: int = 0
    invalid: int = 0
    stale: int = 0
    transitions: list[dict[str, Any]] = field(default_factory=list)
    notifications: list[dict[str, Any]] = field(default_factory=list)
    dlq_codes: list[str] = field(default_factory=list)
    # What a specialised consumer wants to count once the batch is committed.
    extra: Any = None
    next_offsets: dict[int, int] = field(default_factory=dict)
    seek_to: dict[int, int] = field(default_factory=dict)


class _Rebalance(ConsumerRebalanceListener):  # type: ignore[misc]
    def __init__(self, owner: EventConsumer) -> None:
        self.owner = owner

    async def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        # Let the batch in hand finish and commit before the partitions go elsewhere; a batch
        # fetched ahead is now from an old assignment and will be dropped.
        async with self.owner.batch_lock:
            pass

    async def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None:
        await self.owner.seek_to_stored(assigned)


class EventConsumer:
    """Drives the pure pipeline from Kafka records to committed database state."""

    def __init__(
        self,
        *,
        settings: Settings,
        db: AsyncEngine,
        consumer: AIOKafkaConsumer,
        metrics: Metrics,
        on_commit: Callable[[], None] = lambda: None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.settings = settings
        self.topic = settings.topic_events
        self.db = db
        self.consumer = consumer
        self.metrics = metrics
        self.on_commit = on_commit
        self.clock = clock
        self.batch_lock = asyncio.Lock()
        self._checked_for_reset = False
        self.engine: Engine | None = None
        self._lag_checked = 0.0
        self.batches = 0

    def subscribe(self) -> None:
        self.consumer.subscribe([self.topic], listener=_Rebalance(self))

    async def seek_to_stored(self, assigned: set[TopicPartition]) -> None:
        """Start each assigned partition where the database says the work ends."""
        if not assigned:
            return
        async with self.db.connect() as conn:
            pg = await driver(conn)
            stored = await store.stored_offsets(pg, self.topic)
            if not self._checked_for_reset:
                stored = await self._forget_lost_log(pg, assigned, stored)
        for tp in assigned:
            offset = stored.get(tp.partition)
            if offset is None:
                await self.consumer.seek_to_beginning(tp)  # never scored here
            else:
                self.consumer.seek(tp, offset)

    async def _forget_lost_log(
        self, pg: asyncpg.Connection, assigned: set[TopicPartition], stored: dict[int, int]
    ) -> dict[int, int]:
        """At start-up: a broker that lost its log (the embedded one keeps it in memory
        only) has partitions that end before our stored offsets. Their offsets start again
        from 0; the dedup table makes reading the new log from the start safe.

        Only an empty partition or a gap of LOG_RESET_GAP counts: the embedded broker can
        report an end offset a producer batch behind the truth while it is being written.
        """
        self._checked_for_reset = True
        ends = await self.consumer.end_offsets(list(assigned))
        lost = [
            tp.partition
            for tp in assigned
            if tp.partition in stored
            and (
                ends[tp] == 0 < stored[tp.partition]
                or stored[tp.partition] > ends[tp] + LOG_RESET_GAP
            )
        ]
        if lost:
            log.warning(
                "partitions %s of %s end before the stored offsets: the broker lost its "
                "log; reading them again from the start",
                lost,
                self.topic,
            )
            await store.save_offsets(pg, self.topic, dict.fromkeys(lost, 0))
            stored = {**stored, **dict.fromkeys(lost, 0)}
        return stored

    async def engine_for(self, pg: asyncpg.Connection) -> Engine:
        """The engine for the active version, read inside the batch's transaction.

        The shared lock pairs with the exclusive one that activation takes: a batch that
        started before an activation finishes under the old version, and every batch that
        starts after it scores with the new one, on every instance, at once.
        """
        version = await pg.fetchval(
            "SELECT (SELECT version FROM active_ruleset WHERE id = 1) "
            "FROM pg_advisory_xact_lock_shared($1)",
            RULESET_LOCK,
        )
        if version is None:
            raise RuntimeError("no active rule set")
        if self.engine is None or self.engine.rules.version != version:
            self.engine = Engine(await load_version(pg, version))
            self.metrics.ruleset_version.set(version)
            log.info("scoring with rule set version %d", version)
        return self.engine

    async def run(self, stop: asyncio.Event) -> None:
        """Consume until `stop` is set; the batch in hand is finished and committed first."""
        while not stop.is_set():
            # getmany returns as soon as records are buffered; the timeout only bounds how
            # long an idle consumer waits before checking `stop` again.
            batch = await self.consumer.getmany(
                timeout_ms=250, max_records=self.settings.batch_max_records
            )
            if batch:
                async with self.batch_lock:
                    await self.process(batch, stop)
            await self._update_lag()

    async def _update_lag(self) -> None:
        """Records between each assigned partition's position and its end, at most once a second."""
        now = time.monotonic()
        if now - self._lag_checked < 1.0:
            return
        self._lag_checked = now
        assignment = self.consumer.assignment()
        if self.topic == self.settings.topic_events:
            self.metrics.assigned_partitions.set(len(assignment))
        for tp in assignment:
            high = self.consumer.highwater(tp)
            if high is None:
                continue
            try:
                position = await self.consumer.position(tp)
            except IllegalStateError:
                continue  # revoked meanwhile
            self.metrics.lag.labels(tp.topic, str(tp.partition)).set(max(high - position, 0))

    async def process(
        self, batch: dict[TopicPartition, list[ConsumerRecord]], stop: asyncio.Event | None = None
    ) -> BatchReport:
        """Score one batch with retries; only returns once it is committed (or stopping)."""
        now = self.clock()
        return await self.process_parsed(self.parse_batch(batch, now), now, stop)

    def parse_batch(
        self, batch: dict[TopicPartition, list[ConsumerRecord]], now: float
    ) -> dict[int, list[tuple[ConsumerRecord, Any]]]:
        return {
            tp.partition: [(r, self.parse(r, now)) for r in records]
            for tp, records in batch.items()
        }

    async def process_parsed(
        self,
        parsed: dict[int, list[tuple[ConsumerRecord, Any]]],
        now: float,
        stop: asyncio.Event | None = None,
    ) -> BatchReport:
        started = time.perf_counter()
        attempt = 0
        while True:
            try:
                report = await self._transaction(parsed, now)
                break
            except RETRYABLE as exc:
                self.metrics.batch_retries.labels(type(exc).__name__).inc()
                log.info(
                    "batch conflicted with another instance (%s); retrying",
                    exc,
                    extra={"batch": self.batches, "topic": self.topic},
                )
            except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
                self.metrics.batch_retries.labels(type(exc).__name__).inc()
                log.warning(
                    "batch failed (%s); retrying",
                    exc,
                    extra={"batch": self.batches, "topic": self.topic},
                )
                if stop is not None and stop.is_set():
                    raise
            await asyncio.sleep(RETRY_DELAYS[min(attempt, len(RETRY_DELAYS) - 1)])
            attempt += 1
        self.on_commit()
        await self._commit_kafka(report)
        for partition, offset in report.seek_to.items():
            self.consumer.seek(TopicPartition(self.topic, partition), offset)
        elapsed = time.perf_counter() - started
        total = sum(len(v) for v in parsed.values())
        self.count(report, elapsed, total)
        self.metrics.count_records(report.transitions, report.notifications)
        for code in report.dlq_codes:
            self.metrics.dlq.labels(code).inc()
        self.batches += 1
        return report

    def count(self, report: BatchReport, elapsed: float, total: int) -> None:
        """Metrics of one committed batch of events."""
        self.metrics.batch_seconds.observe(elapsed)
        self.metrics.batch_size.observe(total)
        per_event = elapsed / max(total, 1)
        for _ in range(total):
            self.metrics.event_seconds.observe(per_event)
        self.metrics.events.labels("scored").inc(report.scored)
        self.metrics.events.labels("duplicate").inc(report.duplicates)
        self.metrics.events.labels("invalid").inc(report.invalid)

    def parse(self, record: ConsumerRecord, now: float) -> Event | Rejection:
        return parse_event(record.value or b"", now=now, fallback_ts=record.timestamp / 1000)

    async def _commit_kafka(self, report: BatchReport) -> None:
        offsets = {TopicPartition(self.topic, p): o for p, o in report.next_offsets.items()}
        if not offsets:
            return
        try:
            await self.consumer.commit(offsets)
        except (CommitFailedError, IllegalStateError, KafkaError) as exc:
            # Expected after a rebalance took the partition away; the database has the truth.
            log.info("Kafka offset commit skipped: %s", exc)

    async def _transaction(
        self, parsed: dict[int, list[tuple[ConsumerRecord, Any]]], now: float
    ) -> BatchReport:
        report = BatchReport()
        async with self.db.connect() as conn:
            pg = await driver(conn)
            async with pg.transaction():
                # Everything this transaction writes is derived from Kafka records, and the
                # offsets commit with it: if PostgreSQL crashes before flushing it, the
                # whole batch is lost together and simply scored again (same ids), so the
                # commit need not wait for the disk.
                await pg.execute("SET LOCAL synchronous_commit TO off")
                engine = await self.engine_for(pg)
                stored = await store.lock_offsets(pg, self.topic, sorted(parsed))
                valid: list[tuple[ConsumerRecord, Any]] = []
                outbox: list[store.OutboxRow] = []
                for partition, items in parsed.items():
                    start = stored.get(partition, 0)
                    fresh = [(r, p) for r, p in items if r.offset >= start]
                    if len(fresh) < len(items):
                        report.stale += len(items) - len(fresh)
                    if not fresh:
                        # Another consumer already did these; carry on from where it stopped.
                        report.seek_to[partition] = start
                        continue
                    report.next_offsets[partition] = fresh[-1][0].offset + 1
                    for record, result in fresh:
                        if isinstance(result, Rejection):
                            outbox.append(self.dlq_row(record, result))
                            report.dlq_codes.append(result.code)
                            report.invalid += 1
                        else:
                            valid.append((record, result))
                if valid:
                    outbox.extend(await self.apply(pg, engine, valid, now, report))
                await store.enqueue(pg, outbox)
                await store.save_offsets(pg, self.topic, report.next_offsets)
        return report

    async def apply(
        self,
        pg: asyncpg.Connection,
        engine: Engine,
        items: list[tuple[ConsumerRecord, Event]],
        now: float,
        report: BatchReport,
    ) -> list[store.OutboxRow]:
        """Drop events seen before (in this batch or ever), then score the rest."""
        events: list[Event] = []
        seen: set[tuple[str, str]] = set()
        for _, event in items:
            key = (event.raw_id, event.message_id)
            if key in seen:
                report.duplicates += 1
                continue
            seen.add(key)
            events.append(event)
        new = await store.claim_new(pg, [(e.raw_id, e.message_id) for e in events])
        report.duplicates += len(events) - len(new)
        events = [e for e in events if (e.raw_id, e.message_id) in new]
        report.scored = len(events)
        if not events:
            return []
        return await self._score(pg, engine, events, now, report)

    async def _score(
        self,
        pg: asyncpg.Connection,
        engine: Engine,
        events: list[Event],
        now: float,
        report: BatchReport,
    ) -> list[store.OutboxRow]:
        lead_ids, account_ids = ids_to_load(events)
        await store.lock_keys(pg, [f"l:{i}" for i in lead_ids] + [f"a:{i}" for i in account_ids])
        links = await store.load_links(pg, list(lead_ids))
        targets = set(links.values()) - lead_ids
        if targets:
            await store.lock_keys(pg, [f"l:{i}" for i in targets])
        ws = Workspace(links=links)
        ws.leads = await store.load_leads(pg, list(lead_ids | targets))
        account_ids |= {s.account_id for s in ws.leads.values() if s.account_id}
        ws.accounts = await store.load_accounts(pg, list(account_ids))
        scored = score_batch(ws, engine, events, now=now)
        effects = Effects()
        for item in scored:
            effects.extend(item.effects)
        await store.save_workspace(pg, ws)
        await store.save_history(pg, engine.rules.version, scored, ws)
        return await self.record(pg, engine, effects, report)

    async def record(
        self, pg: asyncpg.Connection, engine: Engine, effects: Effects, report: BatchReport
    ) -> list[store.OutboxRow]:
        """Store transitions and deadlines, name owners, count; returns the outbox rows."""
        report.transitions.extend(effects.transitions)
        report.notifications.extend(effects.notifications)
        return await store.record_effects(
            pg,
            effects,
            queues=engine.rules.queues,
            transitions_topic=self.settings.topic_transitions,
            notifications_topic=self.settings.topic_notifications,
        )

    def dlq_row(self, record: ConsumerRecord, rejection: Rejection) -> store.OutboxRow:
        log.info(
            "message rejected to the DLQ: %s",
            rejection.code,
            extra={"topic": record.topic, "partition": record.partition, "batch": self.batches},
        )
        headers = [
            ("error", rejection.code),
            ("error_detail", rejection.detail[:1000]),
            ("source_topic", record.topic),
            ("source_partition", str(record.partition)),
            ("source_offset", str(record.offset)),
        ]
        return store.OutboxRow(
            self.settings.topic_dlq,
            record.key,
            record.value or b"",
            f"{record.topic}:{record.partition}:{record.offset}",
            headers,
        )
