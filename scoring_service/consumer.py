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
import contextlib
import logging
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import asyncpg
from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener, TopicPartition
from aiokafka.errors import (
    CommitFailedError,
    IllegalStateError,
    KafkaError,
    NoOffsetForPartitionError,
    OffsetOutOfRangeError,
)
from aiokafka.structs import ConsumerRecord
from sqlalchemy.ext.asyncio import AsyncEngine

from scoring_service import store
from scoring_service.engine import Effects, Engine
from scoring_service.intake import Event, Rejection, parse_event
from scoring_service.pipeline import Workspace, ids_to_load, score_event
from services import kafka
from services.db import UNAVAILABLE, driver
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
# The database refuses what the records contain (a value it cannot store, a limit exceeded):
# retrying the same records fails the same way, so the batch is split to find them.
REFUSED = (asyncpg.DataError, asyncpg.ProgramLimitExceededError)
# Back-off while the database is away: start fast, settle at a few seconds.
RETRY_DELAYS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0)


class DatabaseUnavailable(Exception):
    """A batch could not reach the database; the batch in hand is dropped and re-read."""


class PoisonRecord(Exception):
    """Processing one parsed record raised; that record goes to the DLQ, the batch goes on."""

    def __init__(self, item: Any, error: BaseException) -> None:
        super().__init__(f"{type(error).__name__}: {error}")
        self.item = item
        self.error = error


Parsed = dict[int, list[tuple[ConsumerRecord, Any]]]


def _split(parsed: Parsed) -> tuple[Parsed, Parsed]:
    """Two halves that each keep every partition's records in offset order."""
    if len(parsed) > 1:
        partitions = sorted(parsed)
        half = len(partitions) // 2
        return (
            {p: parsed[p] for p in partitions[:half]},
            {p: parsed[p] for p in partitions[half:]},
        )
    [(partition, items)] = parsed.items()
    half = len(items) // 2
    return {partition: items[:half]}, {partition: items[half:]}


def _reject(parsed: Parsed, target: Any, rejection: Rejection) -> Parsed:
    """The same records with the one whose parsed value is `target` turned into a rejection."""
    return {
        p: [(r, rejection if v is target else v) for r, v in items] for p, items in parsed.items()
    }


def printable(text: str) -> str:
    """Text safe to store and send in a header: ASCII, NUL and lone surrogates escaped."""
    return text.encode("ascii", "backslashreplace").decode().replace("\x00", "\\x00")


def _failure(error: BaseException) -> Rejection:
    return Rejection("processing_error", printable(f"{type(error).__name__}: {error}"[:1000]))


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
    fingerprints: dict[int, int | None] = field(default_factory=dict)
    seek_to: dict[int, int] = field(default_factory=dict)

    def merge(self, other: BatchReport) -> None:
        """Add a later part of the same batch (one that was split) to this report."""
        self.scored += other.scored
        self.duplicates += other.duplicates
        self.invalid += other.invalid
        self.stale += other.stale
        self.transitions.extend(other.transitions)
        self.notifications.extend(other.notifications)
        self.dlq_codes.extend(other.dlq_codes)
        self.next_offsets.update(other.next_offsets)
        self.fingerprints.update(other.fingerprints)
        self.seek_to.update(other.seek_to)
        if other.extra is not None:
            self.extra = other.extra if self.extra is None else self.extra + other.extra


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
        self._log_checked = 0.0
        self.engine: Engine | None = None
        self._lag_checked = 0.0
        self.batches = 0

    def subscribe(self) -> None:
        self.consumer.subscribe([self.topic], listener=_Rebalance(self))

    async def seek_to_stored(self, assigned: set[TopicPartition]) -> None:
        """Start each assigned partition where the database says the work ends, after making
        sure the broker still has the log that work was read from."""
        if not assigned:
            return
        await self.check_log({tp.partition for tp in assigned})
        async with self.db.connect() as conn:
            stored = await store.stored_offsets(await driver(conn), self.topic)
        for tp in assigned:
            offset = stored.get(tp.partition)
            if offset is None:
                await self.consumer.seek_to_beginning(tp)  # never scored here
            else:
                self.consumer.seek(tp, offset)

    async def check_log(self, partitions: set[int]) -> set[int]:
        """Find partitions whose log on the broker is not the one scored (the broker lost its
        log: the embedded one keeps it in memory only). The record before each stored offset
        must still be there with the fingerprint stored with the offset.

        For a lost partition the stored offset goes back to the start of the new log, so
        every event on it is scored (the dedup table drops those seen before); the outbox's
        retained records are published again, as the output topics were lost with it.
        """
        self._log_checked = time.monotonic()
        async with self.db.connect() as conn:
            fingerprints = await store.stored_fingerprints(await driver(conn), self.topic)
        wanted = {p: fingerprints[p] for p in partitions if p in fingerprints}
        if not wanted:
            return set()
        try:
            lost = await kafka.lost_partitions(self.settings, self.topic, wanted)
        except (KafkaError, OSError, TimeoutError) as exc:
            # Cannot tell now; the periodic check asks again.
            log.warning("%s: could not check the broker's log (%s)", self.topic, exc)
            return set()
        if not lost:
            return set()
        log.warning(
            "the broker lost the log of %s partitions %s (the records before the stored "
            "offsets are gone or different); scoring those partitions again from the start "
            "of the new log and publishing the retained outbox again",
            self.topic,
            sorted(lost),
        )
        self.metrics.log_lost.labels(self.topic).inc(len(lost))
        await kafka.ensure_topics(self.settings)
        async with self.db.connect() as conn:
            pg = await driver(conn)
            async with pg.transaction():
                await store.lock_offsets(pg, self.topic, sorted(lost))
                await store.save_offsets(pg, self.topic, lost, dict.fromkeys(lost))
                if self.topic == self.settings.topic_events:
                    republished = await pg.execute(
                        "UPDATE outbox SET sent_at = NULL WHERE sent_at IS NOT NULL"
                    )
                    log.warning("outbox records queued to publish again: %s", republished)
        self.on_commit()
        return set(lost)

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
        """Consume until `stop` is set; the batch in hand is finished and committed first.

        Broker and database outages are waited out here, with back-off; only an unexpected
        error leaves this loop (and the supervisor restarts it).
        """
        failures = 0
        # A restarted loop may have fetched past what it committed: start from the database.
        needs_resync = True
        while not stop.is_set():
            try:
                if needs_resync:
                    await self._resync()
                    needs_resync = False
                # getmany returns as soon as records are buffered; the timeout only bounds
                # how long an idle consumer waits before checking `stop` again.
                batch = await self.consumer.getmany(
                    timeout_ms=250, max_records=self.settings.batch_max_records
                )
                if batch:
                    async with self.batch_lock:
                        await self.process(batch, stop)
                await self._update_lag()
                if time.monotonic() - self._log_checked >= self.settings.log_check_seconds:
                    await self._recheck_log()
                failures = 0
            except OffsetOutOfRangeError as exc:
                log.warning("%s: offsets out of range (%s); checking the log", self.topic, exc)
                await self._out_of_range(exc)
            except NoOffsetForPartitionError as exc:
                # A partition assigned without our seek (the broker forgot the group): go to
                # the stored offsets.
                log.info("%s: %s; resuming from the stored offsets", self.topic, exc)
                needs_resync = True
            except (DatabaseUnavailable, *UNAVAILABLE) as exc:
                failures = await self._wait_out(exc, failures, stop)
                needs_resync = True
            except KafkaError as exc:
                failures = await self._wait_out(exc, failures, stop)

    async def _wait_out(self, exc: BaseException, failures: int, stop: asyncio.Event) -> int:
        delay = RETRY_DELAYS[min(failures, len(RETRY_DELAYS) - 1)]
        log.warning("%s consumer: %s; retrying in %.2f s", self.topic, exc, delay)
        loop = "consumer" if self.topic == self.settings.topic_events else "feedback"
        self.metrics.loop_errors.labels(loop, type(exc).__name__).inc()
        # The lag gauge must keep telling the truth while nothing is committed.
        with contextlib.suppress(KafkaError, IllegalStateError):
            await self._update_lag()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), timeout=delay)
        return failures + 1

    async def _out_of_range(self, exc: OffsetOutOfRangeError) -> None:
        """A lost log resets the stored offsets (check_log). Otherwise the records between our
        position and the log's start aged out before they were scored: say so, start there."""
        await self._recheck_log()
        await self._resync()
        positions = exc.args[0] if exc.args and isinstance(exc.args[0], dict) else {}
        async with self.db.connect() as conn:
            stored = await store.stored_offsets(await driver(conn), self.topic)
        for tp, offset in positions.items():
            if stored.get(tp.partition) == offset:
                log.warning(
                    "%s partition %d: records from offset %d are no longer on the broker "
                    "(retention); continuing from the start of its log",
                    self.topic,
                    tp.partition,
                    offset,
                )
                self.metrics.log_lost.labels(self.topic).inc()
                await self.consumer.seek_to_beginning(tp)

    async def _recheck_log(self) -> None:
        """The periodic check: topics exist, and the assigned partitions' log is the same."""
        self._log_checked = time.monotonic()
        await kafka.ensure_topics(self.settings)
        assigned = {tp.partition for tp in self.consumer.assignment()}
        async with self.batch_lock:
            lost = await self.check_log(assigned)
            if lost:
                await self._resync()

    async def _resync(self) -> None:
        """Go back to the offsets the database holds: records fetched ahead, and batches the
        database may have lost in a crash, are read again."""
        assigned = self.consumer.assignment()
        if not assigned:
            return
        async with self.db.connect() as conn:
            stored = await store.stored_offsets(await driver(conn), self.topic)
        for tp in assigned:
            if tp.partition in stored:
                self.consumer.seek(tp, stored[tp.partition])
            else:
                await self.consumer.seek_to_beginning(tp)
        log.info("%s: resumed from the offsets stored in the database", self.topic)

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

    def parse_batch(self, batch: dict[TopicPartition, list[ConsumerRecord]], now: float) -> Parsed:
        return {
            tp.partition: [(r, self.parse(r, now)) for r in records]
            for tp, records in batch.items()
        }

    async def process_parsed(
        self, parsed: Parsed, now: float, stop: asyncio.Event | None = None
    ) -> BatchReport:
        """Commit a parsed batch, then publish and count; raises DatabaseUnavailable when the
        database cannot be reached (the caller re-reads from the stored offsets)."""
        started = time.perf_counter()
        reports = await self._commit(parsed, now)
        self.on_commit()
        report = reports[0]
        for extra in reports[1:]:
            report.merge(extra)
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

    async def _commit(self, parsed: Parsed, now: float) -> list[BatchReport]:
        """One transaction for the batch if possible. A record whose processing raises goes
        to the DLQ as `processing_error`; a batch the database refuses is halved until the
        refused records are alone, and those go to the DLQ too. Lock conflicts are retried."""
        attempt = 0
        while True:
            try:
                return [await self._transaction(parsed, now)]
            except RETRYABLE as exc:
                self.metrics.batch_retries.labels(type(exc).__name__).inc()
                log.info(
                    "batch conflicted with another instance (%s); retrying",
                    exc,
                    extra={"batch": self.batches, "topic": self.topic},
                )
                await asyncio.sleep(RETRY_DELAYS[min(attempt, len(RETRY_DELAYS) - 1)])
                attempt += 1
            except UNAVAILABLE as exc:
                # What the batch builds on may be gone with the database: the caller goes
                # back to the offsets the database holds before continuing.
                self.metrics.batch_retries.labels(type(exc).__name__).inc()
                raise DatabaseUnavailable(f"{type(exc).__name__}: {exc}") from exc
            except PoisonRecord as exc:
                log.warning("a record failed to process (%s); sending it to the DLQ", exc)
                parsed = _reject(parsed, exc.item, _failure(exc.error))
            except asyncpg.PostgresError as exc:
                if not isinstance(exc, REFUSED):
                    # Not about the data (permissions, a missing table): wait, don't discard.
                    raise DatabaseUnavailable(f"{type(exc).__name__}: {exc}") from exc
                return await self._isolate(parsed, now, exc)
            except Exception as exc:
                # Encoding a record's state for the database failed, or applying it did: the
                # data's fault as far as anyone can tell. Systematic defects show as a DLQ
                # rate by `processing_error` (alerted on), never as a stopped pipeline.
                return await self._isolate(parsed, now, exc)

    async def _isolate(self, parsed: Parsed, now: float, exc: BaseException) -> list[BatchReport]:
        items = [v for records in parsed.values() for _, v in records]
        self.metrics.batch_retries.labels(type(exc).__name__).inc()
        if len(items) == 1:
            if isinstance(items[0], Rejection) and items[0].code == "processing_error":
                # Not even its DLQ copy can be stored: wait (visibly) rather than drop it.
                raise DatabaseUnavailable(f"cannot store a DLQ record: {exc}") from exc
            log.warning("the database refused a record (%s); sending it to the DLQ", exc)
            return await self._commit(_reject(parsed, items[0], _failure(exc)), now)
        log.info("the database refused a batch of %d (%s); splitting it", len(items), exc)
        first, second = _split(parsed)
        return [*await self._commit(first, now), *await self._commit(second, now)]

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

    async def _transaction(self, parsed: Parsed, now: float) -> BatchReport:
        report = BatchReport()
        async with self.db.connect() as conn:
            pg = await driver(conn)
            # The commit waits for the disk (synchronous_commit stays on): an acknowledged batch
            # has had its records published and its Kafka offsets committed, so losing it
            # in a database crash would lose events (README, Reliability).
            async with pg.transaction():
                if not self.settings.synchronous_commit:
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
                    report.fingerprints[partition] = zlib.crc32(fresh[-1][0].value or b"")
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
                await store.save_offsets(pg, self.topic, report.next_offsets, report.fingerprints)
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
        scored = []
        for event in events:
            try:
                scored.append(score_event(ws, engine, event, now=now))
            except Exception as exc:  # a defect the intake did not foresee: see PoisonRecord
                raise PoisonRecord(event, exc) from exc
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
            ("error_detail", printable(rejection.detail[:1000])),
            ("source_topic", record.topic),
            ("source_partition", str(record.partition)),
            ("source_offset", str(record.offset)),
        ]
        value, key = record.value or b"", record.key
        limit = self.settings.max_record_bytes
        if len(value) + len(key or b"") > limit:
            # The broker would refuse the copy; keep its start and say how long it was.
            headers.append(("truncated_from_bytes", str(len(value))))
            key = key[:1024] if key else key
            value = value[: limit - 1024]
        return store.OutboxRow(
            self.settings.topic_dlq,
            key,
            value,
            f"{record.topic}:{record.partition}:{record.offset}",
            headers,
        )
