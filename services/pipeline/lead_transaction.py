"""The one way anything changes leads: a lead transaction (the unit of work).

Every writer uses it: the event consumer, sales feedback (topic and HTTP), the follow-up
deadline watcher, re-scoring, erasures, and any later one. A writer states which leads (and
accounts) it touches; the transaction locks them in the global order below, loads the
working set (the leads, the leads they were merged into, their accounts), lets the writer
run the pure core on it, and then writes state, history, transitions, handoffs, outbox rows
and partition offsets, committing once.

Lock order, the same in every writer and every instance (a transaction only ever waits for
a lock later in this list than every lock it holds, so no two can wait for each other):

  1. the rule-set lock, shared (`ActiveRules.engine`; activation takes it exclusively);
     an erasure then takes its request's row, which nobody waits for (others skip it);
  2. the `consumer_offsets` rows of the batch's partitions, sorted by partition
     (consumers only: `lock_partitions`, or `open_batch` with step 3 in the same call);
  3. advisory locks (`lock_leads`): a. on leads (`l:<id>`), in sorted key order: the ids
     the writer names and every lead they were merged into; b. then on accounts
     (`a:<id>`), in sorted order: the accounts named (group calls) and, when the rule set
     scores accounts, the accounts of every lead locked (a member's activity changes its
     account's roll-up). Every lead lock comes before every account lock, in every writer.
     Steps 2 and 3 and the reads behind them are one call to the database
     (`leadscore_open_batch`, migration 0020: services/adapters/postgres/batch_read.py);
  4. rows that belong to those leads: `leads`, `identity_links`, `processed_events`,
     `lead_events`, `transitions`, `handoffs`, `feedback`. Nobody writes such a row
     without holding step 3's lock on its lead, so these row locks never wait for long
     and never form a cycle (the deadline watcher reads due handoffs without locking,
     takes step 3, then re-reads them);
  5. `routing_cursors` rows, sorted by queue name (`record_store.assign_owners`);
  6. outbox appends (no locks).

A link written by another instance between reading the links and taking step 3 can point
at a lead whose lock this transaction does not hold; that lock is only tried, never waited
for, and the transaction is retried when it is busy (`LinkRaced`, counted as a retry).
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

from sqlalchemy.ext.asyncio import AsyncEngine

from scoring_service.effects import Effects
from scoring_service.engine import Engine
from scoring_service.pipeline import ScoredEvent, Workspace, note_scores
from services.adapters.postgres import (
    batch_read,
    db,
    history_store,
    lead_store,
    offset_store,
    outbox_store,
    record_store,
    rule_set_store,
)
from services.adapters.postgres.db import Connection, HeldConnection, connection
from services.adapters.postgres.errors import CONFLICTS, DATABASE_ERROR
from services.metrics import Metrics
from services.pipeline.active_rules import ActiveRules
from services.pipeline.challenger import Shadow, save_shadow
from services.pipeline.effects import record_effects
from services.pipeline.lead_cache import LeadCache
from services.settings import Settings
from stage_router.records import AccountTransitionDoc

log = logging.getLogger(__name__)
T = TypeVar("T")


class LinkRaced(Exception):
    """A lead this transaction must hold was linked to by another instance meanwhile and
    its lock is busy; the transaction starts again."""


class LockOrderError(RuntimeError):
    """A writer asked for locks out of the documented order: a programming error."""


# Lock conflicts resolve by rolling back and trying again. With the order above they should
# not happen between leadscore's own writers; a DBA's session or an old instance may still
# cause one.
RETRYABLE = (*CONFLICTS, LinkRaced)
# Back-off between attempts: start fast, settle at a few seconds.
RETRY_DELAYS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0)


def backoff(attempt: int) -> float:
    """Seconds to wait before attempt `attempt + 1` (lock conflicts, outages)."""
    return RETRY_DELAYS[min(attempt, len(RETRY_DELAYS) - 1)]


_OPEN, _PARTITIONS, _LEADS = 0, 1, 2


@dataclass(slots=True)
class LeadTransaction:
    """One open transaction: the working set, what the writer decided, what to write."""

    pg: Connection
    engine: Engine
    settings: Settings
    now: float
    # The challenger version's engine when one runs (services/pipeline/challenger.py), and its
    # working set once a writer that scores events has opened it.
    challenger: Engine | None = None
    shadow: Shadow | None = None
    ws: Workspace = field(default_factory=Workspace)
    effects: Effects = field(default_factory=Effects)
    scored: list[ScoredEvent] = field(default_factory=list)
    outbox: list[outbox_store.OutboxRow] = field(default_factory=list)
    # The writer's copies of leads it wrote before (services/pipeline/lead_cache.py), and the
    # versions this transaction stored for the leads it wrote.
    cache: LeadCache | None = None
    # The dedup keys `open_batch` found stored before (events seen already).
    seen: set[tuple[str, str]] = field(default_factory=set)
    # The suppression keys `open_batch` found on the list (erased people's events).
    suppressed: set[bytes] = field(default_factory=set)
    saved_versions: dict[str, int] = field(default_factory=dict)
    cache_hits: int = 0
    cache_misses: int = 0
    _offsets: dict[str, tuple[dict[int, int], dict[int, int | None], uuid.UUID | None]] = field(
        default_factory=dict
    )
    _step: int = _OPEN

    async def lock_partitions(
        self, topic: str, partitions: Sequence[int], log_id: uuid.UUID | None = None
    ) -> dict[int, int]:
        """Step 2: lock the partitions' offset rows; returns each one's stored next offset
        (raises offset_store.LogReplaced when they belong to another log than `log_id`)."""
        if self._step > _OPEN:
            raise LockOrderError("partition offsets are locked before any lead")
        self._step = _PARTITIONS
        return await offset_store.lock_offsets(self.pg, topic, sorted(partitions), log_id)

    async def lock_leads(
        self, lead_ids: Iterable[str], account_ids: Iterable[str] = ()
    ) -> Workspace:
        """Step 3: lock the named leads, the leads they were merged into and the accounts
        that will change, then load them all into `ws`. Once per transaction."""
        await self._open(lead_ids=set(lead_ids), account_ids=set(account_ids))
        return self.ws

    async def open_batch(
        self,
        topic: str,
        partitions: Sequence[int],
        log_id: uuid.UUID | None,
        lead_ids: Iterable[str],
        account_ids: Iterable[str],
        keys: Sequence[tuple[str, str]],
        suppression: Sequence[bytes] = (),
    ) -> dict[int, int]:
        """Steps 2 and 3 and every read a batch of events needs, in one round trip: lock
        the partitions' offset rows, then the leads and accounts as `lock_leads` does, and
        look up the dedup `keys` (those stored before land in `seen`) and the `suppression`
        keys (those on the list land in `suppressed`). Returns each
        partition's stored next offset (raises offset_store.LogReplaced when a row belongs
        to another log than `log_id`)."""
        if self._step > _OPEN:
            raise LockOrderError("partition offsets are locked before any lead")
        read = await self._open(
            lead_ids=set(lead_ids),
            account_ids=set(account_ids),
            topic=topic,
            partitions=sorted(partitions),
            keys=keys,
            suppression=suppression,
        )
        if log_id is not None and any(t not in (None, log_id) for _, t in read.offsets.values()):
            raise offset_store.LogReplaced(topic, log_id)
        self.seen = read.seen
        self.suppressed = read.suppressed
        return {p: offset for p, (offset, _) in read.offsets.items()}

    async def _open(
        self,
        *,
        lead_ids: set[str],
        account_ids: set[str],
        topic: str = "",
        partitions: Sequence[int] = (),
        keys: Sequence[tuple[str, str]] = (),
        suppression: Sequence[bytes] = (),
    ) -> batch_read.BatchRead:
        if self._step >= _LEADS:
            raise LockOrderError("leads are locked once per transaction, in one statement")
        self._step = _LEADS
        known = self.cache.take(lead_ids) if self.cache is not None else None
        try:
            read = await batch_read.open_batch(
                self.pg,
                lead_ids=lead_ids,
                account_ids=account_ids,
                # Scored accounts change with every member's activity: their locks too (3b).
                member_accounts=self.engine.accounts is not None,
                known=known,
                topic=topic,
                partitions=partitions,
                keys=keys,
                suppression=suppression,
            )
        except DATABASE_ERROR as exc:
            if exc.sqlstate == batch_read.LINK_RACED:
                raise LinkRaced(str(exc)) from exc
            raise
        self.ws = Workspace(links=read.links, leads=read.leads, accounts=read.accounts)
        if known is not None:
            self.cache_hits = read.reused
            self.cache_misses = len(read.leads) - read.reused
        return read

    async def audit(
        self, *, actor: str, action: str, target: str | None, detail: dict[str, Any] | None
    ) -> None:
        """An audit entry, committed with the change it records."""
        await rule_set_store.record_audit(
            self.pg, actor=actor, action=action, target=target, detail=detail
        )

    async def account_transition_caused_by(
        self, account_id: str, cause: str
    ) -> AccountTransitionDoc | None:
        """The account's transition an earlier feedback with this id made (idempotency)."""
        return await record_store.account_transition_caused_by(self.pg, account_id, cause)

    async def stored_feedback(self, feedback_ids: Sequence[str]) -> Mapping[str, Any]:
        """Feedback already recorded under these ids (a repeat is answered as before)."""
        return await record_store.stored_feedback(self.pg, feedback_ids)

    async def answer_handoffs(self, answered: Sequence[tuple[str, str, float]]) -> list[Any]:
        """Mark the leads' open follow-up deadlines answered; each one's stage, seconds, in time."""
        return await record_store.answer_handoffs(self.pg, answered)

    async def save_feedback(self, rows: Sequence[record_store.FeedbackRow]) -> None:
        await record_store.save_feedback(self.pg, rows)

    def save_offsets(
        self,
        topic: str,
        next_offsets: dict[int, int],
        fingerprints: dict[int, int | None],
        log_id: uuid.UUID | None = None,
    ) -> None:
        """Where a consumer's work ends, written with everything else at the end."""
        if self._step < _PARTITIONS and next_offsets:
            raise LockOrderError("offsets are saved only for partitions locked first")
        self._offsets[topic] = (next_offsets, fingerprints, log_id)

    async def flush(self) -> None:
        """Write what the transaction changed and decided; the caller's commit follows."""
        if self._step >= _LEADS:
            if self.engine.accounts is not None:
                self.ws.note_member_accounts()
            note_scores(self.ws, self.engine)
            self.saved_versions = await lead_store.save_workspace(self.pg, self.ws)
            await history_store.save_history(
                self.pg,
                self.engine.rules.version,
                self.scored,
                self.ws,
                self.shadow.hits if self.shadow is not None and self.shadow.hits else None,
            )
            self.outbox.extend(
                await record_effects(
                    self.pg, self.effects, queues=self.engine.rules.queues, settings=self.settings
                )
            )
        if self.shadow is not None:
            await save_shadow(self.pg, self.shadow)
        await outbox_store.enqueue(self.pg, self.outbox)
        for topic, (next_offsets, fingerprints, log_id) in self._offsets.items():
            await offset_store.save_offsets(self.pg, topic, next_offsets, fingerprints, log_id)


class LeadWriter:
    """Runs a writer's work in a lead transaction: commits once, retries lock conflicts,
    wakes the outbox relay and counts the published records after each commit."""

    def __init__(
        self,
        *,
        db: AsyncEngine,
        rules: ActiveRules,
        settings: Settings,
        metrics: Metrics,
        on_commit: Callable[[], None] = lambda: None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.cache = LeadCache(settings.lead_cache_size) if settings.lead_cache_size else None
        self.db = db
        self.rules = rules
        self.settings = settings
        self.metrics = metrics
        self.on_commit = on_commit
        self.clock = clock

    async def run(
        self,
        work: Callable[[LeadTransaction], Awaitable[T]],
        *,
        writer: str,
        now: float | None = None,
        held: HeldConnection | None = None,
    ) -> T:
        """`work` in one transaction, again from the start after a lock conflict. Any other
        error rolls back and propagates (database outages included: callers wait them out).
        `held`: the caller's own connection (a consumer lane's), else one from the pool."""
        attempt = 0
        while True:
            try:
                tx, result = await self._once(work, now if now is not None else self.clock(), held)
            except RETRYABLE as exc:
                self.metrics.batch_retries.labels(type(exc).__name__).inc()
                log.info("%s: lock conflict (%s); trying again", writer, exc)
                await asyncio.sleep(backoff(attempt))
                attempt += 1
                continue
            if self.cache is not None:
                # Committed: what it wrote is what is stored, at these versions.
                self.cache.put(tx.ws.leads, tx.saved_versions)
                self.metrics.lead_cache.labels("hit").inc(tx.cache_hits)
                self.metrics.lead_cache.labels("miss").inc(tx.cache_misses)
            self.on_commit()
            self.metrics.count_records(tx.effects)
            if tx.shadow is not None:
                self.metrics.challenger_events.labels("failed").inc(tx.shadow.errors)
                self.metrics.challenger_events.labels("scored").inc(
                    len(tx.scored) - tx.shadow.errors
                )
            return result

    async def _once(
        self,
        work: Callable[[LeadTransaction], Awaitable[T]],
        now: float,
        held: HeldConnection | None,
    ) -> tuple[LeadTransaction, T]:
        if held is None:
            async with connection(self.db) as pg:
                return await self._in_transaction(pg, work, now)
        async with held.use() as pg:
            return await self._in_transaction(pg, work, now)

    async def _in_transaction(
        self, pg: Connection, work: Callable[[LeadTransaction], Awaitable[T]], now: float
    ) -> tuple[LeadTransaction, T]:
        # The commit waits for the disk (synchronous_commit stays on unless configured
        # off): an acknowledged batch has had its records published and its Kafka
        # offsets committed, so losing it in a database crash would lose events.
        async with pg.transaction():
            if not self.settings.synchronous_commit:
                await db.commit_without_waiting_for_disk(pg)
            engine, challenger_engine = await self.rules.engines(pg)
            tx = LeadTransaction(
                pg=pg,
                engine=engine,
                settings=self.settings,
                now=now,
                challenger=challenger_engine,
                cache=self.cache,
            )
            result = await work(tx)
            await tx.flush()
        return tx, result
