"""A lead transaction's locks and reads in one call (migration 0020: leadscore_open_batch),
at the moment the one-call shape makes delicate: an identity link committed by another
transaction after the call read the links and before it held its locks.

The race is played for real with three connections: the test holds the alias's lock so the
call waits between its first read of the links and its locks, commits the link meanwhile,
and (in the first case) holds the joined lead's lock elsewhere so the call cannot take it."""

from __future__ import annotations

import asyncio
from typing import Any

import asyncpg

from services.adapters.postgres import batch_read
from services.pipeline.lead_transaction import LeadTransaction
from tests.helpers.database import connect_db
from tests.helpers.waiting import wait_for

LOCK = "SELECT pg_advisory_xact_lock(hashtextextended($1, 7))"


async def waiting_for_an_advisory_lock(pg: asyncpg.Connection) -> bool:
    waiting = await pg.fetchval(
        "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted"
    )
    return bool(waiting)


async def lock_alias_then_link_it(settings: Any, observer: asyncpg.Connection) -> Any:
    """Hold `l:anon-1`, and return a function that writes the link anon-1 -> u-9 and
    commits, releasing the lock (call it once the transaction under test waits)."""
    linker = await connect_db(settings)
    await linker.execute("BEGIN")
    await linker.execute(LOCK, "l:anon-1")

    async def link_and_commit() -> None:
        await wait_for(
            lambda: waiting_for_an_advisory_lock(observer), what="the call waiting for anon-1"
        )
        await linker.execute(
            "INSERT INTO identity_links (alias_id, lead_id) VALUES ('anon-1', 'u-9')"
        )
        await linker.execute("COMMIT")
        await linker.close()

    return link_and_commit


async def test_a_lead_linked_meanwhile_and_busy_makes_the_transaction_start_again(
    open_container, settings
):
    observer = await connect_db(settings)
    holder = await connect_db(settings)
    try:
        # Another writer holds u-9 (the lead anon-1 is about to join) for now.
        await holder.execute("BEGIN")
        await holder.execute(LOCK, "l:u-9")
        link_and_commit = await lock_alias_then_link_it(settings, observer)
        writer = open_container.writer
        retried = writer.metrics.batch_retries.labels("LinkRaced")
        before = retried._value.get()
        attempts: list[set[str]] = []

        async def work(tx: LeadTransaction) -> dict[str, str]:
            ws = await tx.lock_leads(["anon-1"])
            attempts.append(set(ws.links))
            return dict(ws.links)

        running = asyncio.create_task(writer.run(work, writer="test"))
        await link_and_commit()
        # The call found the link after its locks, could not take u-9's lock and gave up:
        # the writer counts a retry and starts again.
        await wait_for(lambda: retried._value.get() > before, what="a LinkRaced retry")
        assert not running.done()
        await holder.execute("COMMIT")
        links = await asyncio.wait_for(running, timeout=30)
        # Started again, it read the link before locking and took both leads' locks.
        assert links == {"anon-1": "u-9"}
        assert attempts == [{"anon-1"}]
    finally:
        await holder.close()
        await observer.close()


async def test_a_lead_linked_meanwhile_and_free_is_locked_and_read_at_once(
    open_container, settings
):
    observer = await connect_db(settings)
    checker = await connect_db(settings)
    try:
        await checker.execute(
            "INSERT INTO leads (lead_id, stage, traits) VALUES ('u-9', 'mql', '{}')"
        )
        link_and_commit = await lock_alias_then_link_it(settings, observer)
        pg = await connect_db(settings)
        try:
            async with pg.transaction():
                opening = asyncio.create_task(
                    batch_read.open_batch(pg, lead_ids=["anon-1"], member_accounts=False)
                )
                await link_and_commit()
                read = await asyncio.wait_for(opening, timeout=30)
                assert read.links == {"anon-1": "u-9"}
                assert set(read.leads) == {"u-9"}
                # The late lead's lock is held by the call's transaction until it ends.
                taken = await checker.fetchval(
                    "SELECT pg_try_advisory_lock(hashtextextended('l:u-9', 7))"
                )
                assert taken is False
        finally:
            await pg.close()
    finally:
        await checker.close()
        await observer.close()
