"""The outbox: records waiting for the relay, appended in the writer's transaction.

Every function here runs inside the caller's transaction and never commits: a batch's state
changes, dedup keys, outbox rows and partition offsets commit together or not at all.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import asyncpg
import orjson


@dataclass(frozen=True, slots=True)
class OutboxRow:
    """A record waiting in the outbox for the relay to publish."""

    topic: str
    key: bytes | None
    value: bytes
    record_id: str | None
    headers: list[tuple[str, str]] | None = None


async def enqueue(pg: asyncpg.Connection, rows: Sequence[OutboxRow]) -> None:
    """Append records to the outbox, keeping their order (the relay publishes by id)."""
    if not rows:
        return
    await pg.execute(
        # The notification reaches every relay at commit (services/pipeline/relay.py: CHANNEL).
        """
        WITH added AS (
            INSERT INTO outbox (topic, key, value, record_id, headers)
            SELECT t, k, v, r, h::jsonb
            FROM unnest($1::text[], $2::bytea[], $3::bytea[], $4::text[], $5::text[])
                 WITH ORDINALITY AS u(t, k, v, r, h, n)
            ORDER BY n
            RETURNING 1
        )
        SELECT pg_notify('leadscore_outbox', '') WHERE EXISTS (SELECT 1 FROM added)
        """,
        [r.topic for r in rows],
        [r.key for r in rows],
        [r.value for r in rows],
        [r.record_id for r in rows],
        [orjson.dumps(r.headers).decode() if r.headers else None for r in rows],
    )


async def publish_outbox_again(pg: asyncpg.Connection) -> int:
    """Queue every retained outbox record to be published again (the output topics were lost
    with the broker's log); returns how many."""
    status = await pg.execute("UPDATE outbox SET sent_at = NULL WHERE sent_at IS NOT NULL")
    return int(status.split()[-1])
