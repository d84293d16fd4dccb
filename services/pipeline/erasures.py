"""Erasure requests, carried out: every row of a person goes, in one lead transaction each.

A request (services/app/people.py takes it) waits in `person_requests` with the identifier
the person was named by. This loop takes the oldest one (other instances skip it while it is
taken), and in one lead transaction (services/pipeline/lead_transaction.py):

1. finds the person's leads by that identifier, then locks them, the leads they were merged
   into and their accounts, as every writer does: a batch of events for the same person
   waits for the erasure, then finds it suppressed;
2. takes the leads out of their accounts and re-scores the accounts without them;
3. deletes their rows in every table (services/adapters/postgres/person_store.py, `ERASE`);
4. puts the keyed hashes of all their ids and addresses on the suppression list (unless the
   request said not to);
5. appends an erasure record per lead to the outbox (the `lead-erasures` topic, and webhook
   endpoints that take `erasures`);
6. marks the request done with the rows removed per table, letting go of the identifier.

One commit: a crash leaves the person whole (the request still waiting, taken again after a
restart) or gone, never half. One request per transaction keeps each short, so a queue of
thousands runs beside scoring rather than in front of it.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from datetime import UTC, datetime

import orjson

from scoring_service.suppression import Suppression
from services.adapters.postgres import person_store, read_store
from services.adapters.postgres.db import connection, transaction
from services.adapters.postgres.errors import DATABASE_ERROR, UNAVAILABLE
from services.adapters.postgres.outbox_store import OutboxRow
from services.adapters.postgres.rule_set_store import VersionUnusable
from services.outputs import ERASURES
from services.pipeline.lead_transaction import LeadTransaction, LeadWriter
from services.settings import Settings

log = logging.getLogger(__name__)


async def leads_named(tx: LeadTransaction, found_by: str, identifier: str) -> list[str]:
    """The leads a person is known as now: every lead with the address, or the lead an id
    counts for (following merges). Read before the locks; the caller locks and re-checks."""
    if found_by == "email":
        return await person_store.leads_by_email(tx.pg, identifier)
    return [await read_store.canonical_lead_id(tx.pg, identifier)]


def erasure_row(
    topic: str, request_id: uuid.UUID, lead_id: str, *, suppressed: bool, at: float
) -> OutboxRow:
    """The record that tells downstream systems a lead was erased (schemas.records
    ErasureRecord), as an outbox row keyed like the lead's other records."""
    erasure_id = f"{request_id}:{lead_id}"
    record = {
        "erasure_id": erasure_id,
        "lead_id": lead_id,
        "request_id": str(request_id),
        "suppressed": suppressed,
        "erased_at": datetime.fromtimestamp(at, UTC).isoformat().replace("+00:00", "Z"),
    }
    return OutboxRow(
        topic,
        lead_id.encode(),
        orjson.dumps(record),
        erasure_id,
        kind=ERASURES.effect,
        subject=lead_id,
        seq=0,
    )


# Leads past `lead_retention_days` queued per sweep (more wait for the next one).
RETENTION_CHUNK = 10_000
# How often idle leads are looked for: a sweep reads the whole leads table.
RETENTION_SWEEP_SECONDS = 3600.0


class Erasures:
    """The loop that carries out erasure requests, oldest first, and queues the erasure of
    leads idle past `lead_retention_days`."""

    def __init__(self, *, settings: Settings, writer: LeadWriter, suppression: Suppression) -> None:
        self.settings = settings
        self.writer = writer
        self.db = writer.db
        self.metrics = writer.metrics
        self.suppression = suppression
        self.clock = time.time
        self._wake = asyncio.Event()
        self._swept_at: float | None = None

    def notify(self) -> None:
        """A request was added: look now rather than at the next poll."""
        self._wake.set()

    async def erase_next(self) -> bool:
        """Carry out the oldest waiting request; False when none waits."""
        taken: list[uuid.UUID] = []
        try:
            outcome = await self.writer.run(lambda tx: self._erase(tx, taken), writer="erasures")
        except (*UNAVAILABLE, DATABASE_ERROR, VersionUnusable):
            raise
        except Exception as exc:  # a defect: the request fails in words, the queue goes on
            if not taken:
                raise
            # Logged without the message: it could quote the person's identifier.
            log.error("an erasure failed: %s", type(exc).__name__)
            await self._fail(taken[-1], f"{type(exc).__name__} while erasing")
            self.metrics.person_requests.labels("erase", "failed").inc()
            return True
        if outcome is None:
            return False
        self.metrics.person_requests.labels("erase", "done").inc()
        return True

    async def _erase(self, tx: LeadTransaction, taken: list[uuid.UUID]) -> uuid.UUID | None:
        request = await person_store.take_waiting(tx.pg)
        if request is None:
            return None
        request_id: uuid.UUID = request["id"]
        taken.append(request_id)
        found_by, identifier = request["found_by"], request["identifier"]
        named = await leads_named(tx, found_by, identifier)
        before = await person_store.merged_into(tx.pg, named)
        ws = await tx.lock_leads([*named, *before])
        # Under the locks: the leads as they are now (one may have been merged meanwhile).
        lead_ids = sorted({ws.canonical(i) for i in named} & ws.leads.keys())
        merged = await person_store.merged_into(tx.pg, lead_ids)
        ids = sorted({*lead_ids, *merged, *before, *([] if found_by == "email" else [identifier])})
        states = [ws.leads.pop(i) for i in lead_ids]
        accounts = sorted({s.account_id for s in states if s.account_id})
        for state in states:
            account = ws.accounts.get(state.account_id or "")
            if account is not None and tx.engine.accounts is not None:
                tx.effects.extend(
                    tx.engine.erase_member(
                        account, state.lead_id, at=tx.now, caused_by=f"erasure:{request_id}"
                    )
                )
                ws.changed_accounts.add(account.account_id)
        removed = await person_store.erase_rows(
            tx.pg, lead_ids=lead_ids, ids=ids, account_ids=accounts
        )
        if request["suppress"]:
            keys = self.suppression.person_keys(ids, [s.traits for s in states])
            if found_by == "email":
                keys.add(self.suppression.email_key(identifier))
            await person_store.suppress(tx.pg, keys, request_id)
        topic = ERASURES.topic(self.settings)
        tx.outbox.extend(
            erasure_row(topic, request_id, lead_id, suppressed=request["suppress"], at=tx.now)
            for lead_id in lead_ids
        )
        await person_store.finish_request(
            tx.pg, request_id, leads=len(lead_ids), removed={k: v for k, v in removed.items() if v}
        )
        return request_id

    async def _fail(self, request_id: uuid.UUID, reason: str) -> None:
        """Mark a request that could not be carried out failed, so the queue goes on."""
        async with transaction(self.db) as pg:
            await person_store.finish_request(pg, request_id, leads=0, removed=None, failure=reason)

    async def sweep_idle(self) -> int:
        """Queue erasures of leads past the retention setting, at most hourly; returns how
        many were queued."""
        days = self.settings.lead_retention_days
        now = self.clock()
        if days is None or (
            self._swept_at is not None and now - self._swept_at < RETENTION_SWEEP_SECONDS
        ):
            return 0
        async with transaction(self.db) as pg:
            queued = await person_store.queue_idle(
                pg, idle_since=now - days * 86400, limit=RETENTION_CHUNK
            )
        # A full chunk: more are idle; the next pass sweeps again.
        self._swept_at = None if queued >= RETENTION_CHUNK else now
        if queued:
            log.info("%d leads idle past lead_retention_days queued for erasure", queued)
        return queued

    async def update_gauge(self) -> None:
        async with connection(self.db) as pg:
            self.metrics.person_requests_waiting.set(await person_store.waiting_count(pg))

    async def run(self, stop: asyncio.Event) -> None:
        """Carry out waiting requests until none is left, then wait for the next one (or
        poll, for requests taken by other instances' APIs)."""
        while not stop.is_set():
            self._wake.clear()
            try:
                await self.sweep_idle()
                while not stop.is_set() and await self.erase_next():
                    pass
                await self.update_gauge()
            except (*UNAVAILABLE, DATABASE_ERROR) as exc:
                log.warning("carrying out erasures failed (%s); trying again", exc)
            except VersionUnusable as exc:
                log.debug("erasures wait: %s", exc)
            waits = [asyncio.ensure_future(self._wake.wait()), asyncio.ensure_future(stop.wait())]
            try:
                await asyncio.wait(
                    waits,
                    timeout=self.settings.erasure_check_seconds,
                    return_when=asyncio.FIRST_COMPLETED,
                )
            finally:
                for waiting in waits:
                    waiting.cancel()
