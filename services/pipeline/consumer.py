"""The consumers: one batch loop, with a handler per topic (`lead-events` scores events,
`sales-feedback` applies sales outcomes), each batch in one lead transaction.

Commit order, per batch:
  1. one database transaction (services/pipeline/lead_transaction.py): partition offsets locked and
     checked, dedup keys, lead and account state, transitions, outbox rows (records and
     DLQ), new partition offsets;
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
import uuid
import zlib
from collections.abc import AsyncIterator, Callable
from typing import Any, Generic

from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener, TopicPartition
from aiokafka.errors import (
    CommitFailedError,
    IllegalStateError,
    KafkaError,
    NoOffsetForPartitionError,
    OffsetOutOfRangeError,
)
from aiokafka.structs import ConsumerRecord

from scoring_service.engine import Engine
from scoring_service.intake import Rejection
from services.adapters import kafka
from services.adapters.postgres import offset_store, outbox_store
from services.adapters.postgres.db import HeldConnection, connection, transaction
from services.adapters.postgres.errors import DATABASE_ERROR, REFUSED, UNAVAILABLE
from services.adapters.postgres.rule_set_store import VersionUnusable
from services.metrics import observe_many, size_class
from services.pipeline.batches import (
    BatchReport,
    DatabaseUnavailable,
    DeadLetter,
    Item,
    Outcome,
    Parsed,
    PoisonRecord,
    TopicHandler,
    processing_failure,
    split_batch,
    without,
)
from services.pipeline.lead_transaction import (
    LeadTransaction,
    LeadWriter,
    backoff,
)

log = logging.getLogger(__name__)


# A commit of the group's offsets that takes longer is given up (the next one carries on).
COMMIT_TIMEOUT_SECONDS = 5.0


class GroupOffsets:
    """The consumer group's committed offsets on the broker: a copy of the database's, for
    the group's tools (lag dashboards, `kafka-consumer-groups`). The database's offsets are
    the truth (a consumer seeks to them on every assignment), so the copy may be a moment
    old: it is committed at most once per `interval`, off the batch's path (committing
    after every batch cost a broker round trip inside each batch), and when the loop
    stops. Partitions revoked are forgotten, not committed: the rebalance must not wait for
    a commit the broker may refuse for good (a deleted topic's partitions, which aiokafka
    retries without end)."""

    def __init__(self, consumer: AIOKafkaConsumer, interval: float = 1.0) -> None:
        self.consumer = consumer
        self.interval = interval
        self._pending: dict[TopicPartition, int] = {}
        self._timer: asyncio.Task[None] | None = None
        self._lock = asyncio.Lock()  # one commit at a time: an older one never lands last

    def note(self, offsets: dict[TopicPartition, int]) -> None:
        """Where a committed batch ends (a later batch's offsets replace an earlier's)."""
        if not offsets:
            return
        self._pending.update(offsets)
        if self._timer is None or self._timer.done():
            self._timer = asyncio.create_task(self._commit_soon())

    async def _commit_soon(self) -> None:
        await asyncio.sleep(self.interval)
        await self.flush()

    def forget(self, partitions: set[TopicPartition]) -> None:
        for tp in partitions:
            self._pending.pop(tp, None)

    async def flush(self) -> None:
        async with self._lock:
            pending, self._pending = self._pending, {}
            if not pending:
                return
            try:
                await asyncio.wait_for(self.consumer.commit(pending), COMMIT_TIMEOUT_SECONDS)
            except (CommitFailedError, IllegalStateError, KafkaError, TimeoutError) as exc:
                # Expected after a rebalance took a partition away; the database has the truth.
                log.info("Kafka offset commit skipped: %s", exc)

    async def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._timer
        await self.flush()


class _Rebalance(ConsumerRebalanceListener):  # type: ignore[misc]
    def __init__(self, owner: TopicConsumer[Any, Any]) -> None:
        self.owner = owner

    async def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        # Let the batches in hand finish and commit before the partitions go elsewhere; a
        # batch fetched ahead is now from an old assignment and will be dropped.
        async with self.owner.no_batch_in_hand():
            self.owner.group_offsets.forget(revoked)

    async def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None:
        await self.owner.seek_to_stored(assigned)


class TopicConsumer(Generic[Item, Outcome]):
    """The batch loop: reads a topic in batches, fences them against the stored offsets,
    lets the handler apply them in one lead transaction, then publishes and commits."""

    def __init__(
        self,
        *,
        handler: TopicHandler[Item, Outcome],
        writer: LeadWriter,
        consumer: AIOKafkaConsumer,
        clock: Callable[[], float] = time.time,
        lanes: int = 1,
    ) -> None:
        self.handler = handler
        self.writer = writer
        self.settings = writer.settings
        self.topic = handler.topic
        self.db = writer.db
        self.consumer = consumer
        self.metrics = writer.metrics
        self.clock = clock
        # Lanes score disjoint sets of partitions side by side (partition number modulo the
        # lane count), so one lane's Python work overlaps another's database round trips.
        self.lanes = lanes
        self.lane_locks = [asyncio.Lock() for _ in range(self.lanes)]
        # Each lane keeps its database connection from batch to batch (HeldConnection).
        self.connections = [HeldConnection(writer.db) for _ in range(self.lanes)]
        self._log_checked = 0.0
        self._lag_checked = 0.0
        self.batches = 0
        self.topic_ids = kafka.TopicIds(consumer._client)
        self.group_offsets = GroupOffsets(consumer)

    @property
    def engine(self) -> Engine | None:
        """The engine the last transaction used (shared with every writer)."""
        return self.writer.rules.cached

    def on_commit(self) -> None:
        self.writer.on_commit()

    @contextlib.asynccontextmanager
    async def no_batch_in_hand(self) -> AsyncIterator[None]:
        """Hold every lane between batches (a rebalance, a changed log). Lanes hold only
        their own lock, and this takes them in order, so nothing can wait in a cycle."""
        async with contextlib.AsyncExitStack() as held:
            for lock in self.lane_locks:
                await held.enter_async_context(lock)
            yield

    def subscribe(self) -> None:
        self.consumer.subscribe([self.topic], listener=_Rebalance(self))

    async def seek_to_stored(self, assigned: set[TopicPartition]) -> None:
        """Start each assigned partition where the database says the work ends, after making
        sure the broker still has the log that work was read from."""
        if not assigned:
            return
        await self.check_log({tp.partition for tp in assigned})
        async with connection(self.db) as pg:
            stored = await offset_store.stored_offsets(pg, self.topic)
        for tp in assigned:
            offset = stored.get(tp.partition)
            if offset is None:
                await self.consumer.seek_to_beginning(tp)  # never scored here
            else:
                self.consumer.seek(tp, offset)

    async def check_log(self, partitions: set[int]) -> set[int]:
        """Find partitions whose log on the broker is not the one scored (the broker lost its
        log, or the topic was created again); returns them.

        Kafka says it by the topic's id: another id than the one stored with the offsets is
        another log. Where the broker gives no ids (the Tansu fallback keeps its log in memory
        only), the record before each stored offset must still be there with the fingerprint
        stored with the offset.

        For a lost partition the stored offset goes back to the start of the new log, so
        every event on it is scored (the dedup table drops those seen before); the outbox's
        retained records are published again, as the output topics were lost with it.
        """
        self._log_checked = time.monotonic()
        try:
            current = await self.topic_ids.current(self.topic)
        except KafkaError as exc:  # TopicMissing included: the next batch's check handles it
            log.warning("%s: could not ask the broker for the topic's id (%s)", self.topic, exc)
            return set()
        if current is not None:
            async with connection(self.db) as pg:
                stored_ids = await offset_store.stored_log_ids(pg, self.topic)
            if stored_ids - {current}:
                return set(await self.start_new_log(current))
            return set()
        async with connection(self.db) as pg:
            fingerprints = await offset_store.stored_fingerprints(pg, self.topic)
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
        async with transaction(self.db) as pg:
            await offset_store.lock_offsets(pg, self.topic, sorted(lost))
            await offset_store.save_offsets(pg, self.topic, lost, dict.fromkeys(lost))
            if self.topic == self.settings.topic_events:
                republished = await outbox_store.publish_outbox_again(pg)
                log.warning("outbox records queued to publish again: %d", republished)
        self.on_commit()
        return set(lost)

    async def start_new_log(self, log_id: uuid.UUID) -> list[int]:
        """A batch came from a new log of the topic (its id changed): the broker lost its log,
        or the topic was created again. Every partition starts again from the new log's
        beginning (events seen before are dropped by the dedup keys), and the retained
        outbox is published again, as the output topics were lost with the log."""
        await kafka.ensure_topics(self.settings)
        await self._know_the_topic()
        async with transaction(self.db) as pg:
            reset = await offset_store.start_new_log(pg, self.topic, log_id)
            republished = 0
            if reset and self.topic == self.settings.topic_events:
                republished = await outbox_store.publish_outbox_again(pg)
        if reset:
            log.warning(
                "%s is a new log (topic id %s; the broker lost its log or the topic was created "
                "again): partitions %s start again from its beginning, %d outbox records are "
                "published again",
                self.topic,
                log_id,
                reset,
                republished,
            )
            self.metrics.log_lost.labels(self.topic).inc(len(reset))
        self.on_commit()
        return reset

    async def run(self, stop: asyncio.Event) -> None:
        """Consume until `stop` is set; the batch in hand is finished and committed first.

        Broker and database outages are waited out here, with back-off; only an unexpected
        error leaves this loop (and the supervisor restarts it).
        """
        try:
            if self.lanes == 1:
                await self._run_lane(stop, 0)
                return
            async with asyncio.TaskGroup() as lanes:
                for lane in range(self.lanes):
                    lanes.create_task(self._run_lane(stop, lane))
        finally:
            await self.group_offsets.close()
            await self.release_connections()

    async def release_connections(self) -> None:
        """Give the lanes' connections back to the pool (stopping)."""
        for held in self.connections:
            await held.release()

    def _partitions_of(self, lane: int) -> list[TopicPartition]:
        return [tp for tp in self.consumer.assignment() if tp.partition % self.lanes == lane]

    async def _run_lane(self, stop: asyncio.Event, lane: int) -> None:
        """One lane's batch loop. Every lane seeks every assigned partition back to the stored
        offsets when it resyncs: harmless to another lane, whose batch in hand is fenced by
        the stored offsets when it commits, and whose next fetch starts where they say."""
        failures = 0
        # A restarted loop may have fetched past what it committed: start from the database.
        needs_resync = True
        while not stop.is_set():
            try:
                if needs_resync:
                    await self._resync()
                    needs_resync = False
                mine = self._partitions_of(lane) if self.lanes > 1 else []
                if self.lanes > 1 and not mine:
                    # Nothing assigned to this lane (fewer partitions than lanes, or between
                    # assignments): look again shortly.
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(stop.wait(), timeout=0.25)
                    continue
                # getmany returns as soon as records are buffered; the timeout only bounds
                # how long an idle consumer waits before checking `stop` again.
                batch = await self.consumer.getmany(
                    *mine, timeout_ms=250, max_records=self.settings.batch_max_records
                )
                if batch:
                    # Asked after the fetch: if the topic has this id now, it had it when
                    # the records were read (a new log gets a new id, never an old one).
                    # The question travels while the batch is parsed.
                    asking = asyncio.ensure_future(self.topic_ids.current(self.topic))
                    try:
                        now = self.clock()
                        parsed = self.parse_batch(batch, now)
                    finally:
                        log_id = await asking
                    async with self.lane_locks[lane]:
                        await self.process_parsed(parsed, now, stop, log_id=log_id, lane=lane)
                if lane == 0:
                    await self._update_lag()
                    if time.monotonic() - self._log_checked >= self.settings.log_check_seconds:
                        await self._recheck_log()
                failures = 0
            except offset_store.LogReplaced as exc:
                async with self.no_batch_in_hand():
                    await self.start_new_log(exc.log_id)
                needs_resync = True
            except kafka.TopicMissing:
                # Deleted, or lost with the broker's log: create it again; the records in
                # hand cannot be placed, so they are read again from the stored offsets.
                log.warning("%s does not exist on the broker; creating it again", self.topic)
                await kafka.ensure_topics(self.settings)
                await self._know_the_topic()
                needs_resync = True
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
            except VersionUnusable as exc:
                # The batch was not scored and its offsets not stored: it is read again once
                # an admin has activated a version that runs (readiness says so meanwhile).
                failures = await self._wait_out(exc, failures, stop)
                needs_resync = True
            except KafkaError as exc:
                failures = await self._wait_out(exc, failures, stop)
                needs_resync = True  # a batch in hand, if any, was not scored

    async def _wait_out(self, exc: BaseException, failures: int, stop: asyncio.Event) -> int:
        delay = backoff(failures)
        log.warning("%s consumer: %s; retrying in %.2f s", self.topic, exc, delay)
        self.metrics.loop_errors.labels(self.handler.loop, type(exc).__name__).inc()
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
        async with connection(self.db) as pg:
            stored = await offset_store.stored_offsets(pg, self.topic)
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
        await self._know_the_topic()
        assigned = {tp.partition for tp in self.consumer.assignment()}
        async with self.no_batch_in_hand():
            lost = await self.check_log(assigned)
            if lost:
                await self._resync()

    async def _know_the_topic(self) -> None:
        """Refresh the consumer's metadata now where it has no partitions of the topic (it was
        created again after the last refresh): the group assigns only partitions its members
        know of, so until then this consumer would be assigned nothing of it."""
        if not self.consumer.partitions_for_topic(self.topic):
            # A broker away leaves the update pending; the next check asks again.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.consumer._client.force_metadata_update(), 10)

    async def _resync(self) -> None:
        """Go back to the offsets the database holds: records fetched ahead, and batches the
        database may have lost in a crash, are read again."""
        assigned = self.consumer.assignment()
        if not assigned:
            return
        async with connection(self.db) as pg:
            stored = await offset_store.stored_offsets(pg, self.topic)
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
        self,
        batch: dict[TopicPartition, list[ConsumerRecord]],
        stop: asyncio.Event | None = None,
        *,
        log_id: uuid.UUID | None = None,
        lane: int = 0,
    ) -> BatchReport[Outcome]:
        """Score one batch with retries; only returns once it is committed (or stopping).
        `log_id` is the topic's id the batch was read under (None: not checked); `lane`, the
        lane whose database connection it uses."""
        now = self.clock()
        parsed = self.parse_batch(batch, now)
        return await self.process_parsed(parsed, now, stop, log_id=log_id, lane=lane)

    def parse_batch(self, batch: dict[TopicPartition, list[ConsumerRecord]], now: float) -> Parsed:
        return {
            tp.partition: [(r, self.handler.parse(r, now)) for r in records]
            for tp, records in batch.items()
        }

    async def process_parsed(
        self,
        parsed: Parsed,
        now: float,
        stop: asyncio.Event | None = None,
        *,
        log_id: uuid.UUID | None = None,
        lane: int = 0,
    ) -> BatchReport[Outcome]:
        """Commit a parsed batch, then publish and count; raises DatabaseUnavailable when the
        database cannot be reached (the caller re-reads from the stored offsets)."""
        started = time.perf_counter()
        reports = await self._commit(parsed, now, log_id, lane)
        report = reports[0]
        for extra in reports[1:]:
            report.merge(extra)
        self.group_offsets.note(
            {TopicPartition(self.topic, p): o for p, o in report.next_offsets.items()}
        )
        for partition, offset in report.seek_to.items():
            self.consumer.seek(TopicPartition(self.topic, partition), offset)
        elapsed = time.perf_counter() - started
        total = sum(len(v) for v in parsed.values())
        self.count(report, elapsed, total)
        self.handler.count(report)
        for code in report.dlq_codes:
            self.metrics.dlq.labels(code).inc()
        self.batches += 1
        return report

    async def _commit(
        self, parsed: Parsed, now: float, log_id: uuid.UUID | None = None, lane: int = 0
    ) -> list[BatchReport[Outcome]]:
        """One transaction for the batch if possible (the writer retries lock conflicts). A
        record whose processing raises goes to the DLQ as `processing_error`; a batch the
        database refuses is halved until the refused records are alone, and those go to
        the DLQ too."""
        while True:
            try:
                return [await self._transaction(parsed, now, log_id, lane)]
            except UNAVAILABLE as exc:
                # What the batch builds on may be gone with the database: the caller goes
                # back to the offsets the database holds before continuing.
                self.metrics.batch_retries.labels(type(exc).__name__).inc()
                raise DatabaseUnavailable(f"{type(exc).__name__}: {exc}") from exc
            except offset_store.LogReplaced:
                raise  # not the records' fault: the consumer starts the new log
            except VersionUnusable:
                raise  # not the records' fault either: they wait for a version that runs
            except PoisonRecord as exc:
                log.warning("a record failed to process (%s); sending it to the DLQ", exc)
                parsed = without(parsed, exc.item, processing_failure(exc.error))
            except DATABASE_ERROR as exc:
                if not isinstance(exc, REFUSED):
                    # Not about the data (permissions, a missing table): wait, don't discard.
                    raise DatabaseUnavailable(f"{type(exc).__name__}: {exc}") from exc
                return await self._isolate(parsed, now, exc, log_id, lane)
            except Exception as exc:
                # Encoding a record's state for the database failed, or applying it did: the
                # data's fault as far as anyone can tell. Systematic defects show as a DLQ
                # rate by `processing_error` (alerted on), never as a stopped pipeline.
                return await self._isolate(parsed, now, exc, log_id, lane)

    async def _isolate(
        self,
        parsed: Parsed,
        now: float,
        exc: BaseException,
        log_id: uuid.UUID | None,
        lane: int,
    ) -> list[BatchReport[Outcome]]:
        items = [v for records in parsed.values() for _, v in records]
        self.metrics.batch_retries.labels(type(exc).__name__).inc()
        if len(items) == 1:
            if isinstance(items[0], Rejection) and items[0].code == "processing_error":
                # Not even its DLQ copy can be stored: wait (visibly) rather than drop it.
                raise DatabaseUnavailable(f"cannot store a DLQ record: {exc}") from exc
            log.warning("the database refused a record (%s); sending it to the DLQ", exc)
            return await self._commit(
                without(parsed, items[0], processing_failure(exc)), now, log_id, lane
            )
        log.info("the database refused a batch of %d (%s); splitting it", len(items), exc)
        first, second = split_batch(parsed)
        return [
            *await self._commit(first, now, log_id, lane),
            *await self._commit(second, now, log_id, lane),
        ]

    def count(self, report: BatchReport[Outcome], elapsed: float, total: int) -> None:
        """Metrics of one committed batch."""
        self.metrics.batch_seconds.observe(elapsed)
        self.metrics.batch_seconds_by_size.labels(size_class(total)).observe(elapsed)
        self.metrics.batch_size.observe(total)
        observe_many(self.metrics.event_seconds, elapsed / max(total, 1), total)
        self.metrics.events.labels("scored").inc(report.scored)
        self.metrics.events.labels("duplicate").inc(report.duplicates)
        self.metrics.events.labels("invalid").inc(report.invalid)
        if report.bots:
            self.metrics.events.labels("bot").inc(report.bots)
        if report.suppressed:
            self.metrics.events.labels("suppressed").inc(report.suppressed)
        if report.generated_ids:
            self.metrics.message_ids_generated.inc(report.generated_ids)

    async def _transaction(
        self, parsed: Parsed, now: float, log_id: uuid.UUID | None, lane: int
    ) -> BatchReport[Outcome]:
        return await self.writer.run(
            lambda tx: self._apply(tx, parsed, log_id),
            writer=self.handler.loop,
            now=now,
            held=self.connections[lane],
        )

    async def _apply(
        self, tx: LeadTransaction, parsed: Parsed, log_id: uuid.UUID | None
    ) -> BatchReport[Outcome]:
        """Inside the transaction: fence, send rejections to the DLQ, let the handler apply
        the rest, record where the partitions' work now ends."""
        report: BatchReport[Outcome] = BatchReport()

        def dead_letter(record: ConsumerRecord, rejection: Rejection) -> None:
            log.info(
                "message rejected to the DLQ: %s",
                rejection.code,
                extra={"topic": record.topic, "partition": record.partition, "batch": self.batches},
            )
            report.dlq_codes.append(rejection.code)
            report.invalid += 1
            tx.outbox.append(
                DeadLetter(record, rejection).to_outbox(
                    topic=self.settings.topic_dlq, max_record_bytes=self.settings.max_record_bytes
                )
            )

        reads = self.handler.reads(
            [v for items in parsed.values() for _, v in items if not isinstance(v, Rejection)]
        )
        if reads is None:
            stored = await tx.lock_partitions(self.topic, sorted(parsed), log_id)
        else:
            # One round trip for the partitions' rows and everything the batch reads (the
            # records of partitions another consumer has done already are among them: a
            # few more leads locked, in the rare batch that has any).
            stored = await tx.open_batch(
                self.topic,
                sorted(parsed),
                log_id,
                reads.lead_ids,
                reads.account_ids,
                reads.keys,
                reads.suppression,
            )
        valid: list[tuple[ConsumerRecord, Item]] = []
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
                    dead_letter(record, result)
                else:
                    valid.append((record, result))
        if valid:
            await self.handler.apply(tx, valid, report, dead_letter)
        tx.save_offsets(self.topic, report.next_offsets, report.fingerprints, log_id)
        return report
