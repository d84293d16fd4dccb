"""Advisory locks on leads and accounts (step 3 of the lock order in
services/pipeline/lead_transaction.py), in one statement, in sorted order.

Every function here runs inside the caller's transaction and never commits: a batch's state
changes, dedup keys, outbox rows and partition offsets commit together or not at all.
"""

from __future__ import annotations

from collections.abc import Iterable

import asyncpg


async def lock_keys(pg: asyncpg.Connection, keys: Iterable[str]) -> None:
    """Take transaction-scoped advisory locks on leads and accounts, in sorted order,
    waiting for each (step 3 of the lock order in services/pipeline/lead_transaction.py).

    Events for one lead may arrive on several partitions (anonymous and identified keys
    differ), so two consumers can touch one lead; the locks make them take turns, including
    for leads that do not exist yet. Sorted order keeps two transactions from deadlocking.
    """
    ordered = sorted(set(keys))
    if ordered:
        await pg.execute(
            "SELECT pg_advisory_xact_lock(hashtextextended(k, 7)) "
            "FROM unnest($1::text[]) WITH ORDINALITY AS t(k, n) ORDER BY n",
            ordered,
        )


async def try_lock_keys(pg: asyncpg.Connection, keys: Iterable[str]) -> bool:
    """Take the advisory locks without waiting; False when another transaction holds one.

    For locks found to be needed after step 3 (a link written meanwhile): waiting for them
    out of order could deadlock, so the caller retries the whole transaction instead.
    """
    ordered = sorted(set(keys))
    if not ordered:
        return True
    got = await pg.fetchval(
        "SELECT bool_and(pg_try_advisory_xact_lock(hashtextextended(k, 7))) "
        "FROM unnest($1::text[]) WITH ORDINALITY AS t(k, n)",
        ordered,
    )
    return bool(got)
