"""The outbox: records waiting for the relay, appended in the writer's transaction.

Every function here runs inside the caller's transaction and never commits: a batch's state
changes, dedup keys, outbox rows and partition offsets commit together or not at all. The
same statement queues a delivery for every outbound endpoint that wants a record
(migration 0017), so webhooks and CRM writes are as durable as the Kafka records.
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
    # What outbound endpoints choose by (None for dead letters, which no endpoint gets): the
    # record's kind (its effect in services/outputs.py), its lead or account, the stage it
    # is at, a notification's type, and the subject's move number it was made at.
    kind: str | None = None
    subject: str | None = None
    stage: str | None = None
    type: str | None = None
    seq: int = 0


async def enqueue(pg: asyncpg.Connection, rows: Sequence[OutboxRow]) -> None:
    """Append records to the outbox, keeping their order (the relay publishes by id)."""
    if not rows:
        return
    await pg.execute(
        # The notification reaches every relay at commit (services/pipeline/relay.py: CHANNEL).
        """
        WITH input AS MATERIALIZED (
            SELECT * FROM unnest($1::text[], $2::bytea[], $3::bytea[], $4::text[], $5::text[],
                                 $6::text[], $7::text[], $8::text[], $9::text[], $10::int[])
                 WITH ORDINALITY AS u(t, k, v, r, h, kind, subject, stage, ntype, seq, n)
        ), added AS (
            INSERT INTO outbox (topic, key, value, record_id, headers)
            SELECT t, k, v, r, h::jsonb FROM input ORDER BY n
            RETURNING 1
        ), delivering AS (
            INSERT INTO webhook_deliveries (endpoint_id, record_id, kind, subject, seq, payload)
            SELECT e.id, i.r, i.kind, i.subject, i.seq, i.v
            FROM input i JOIN webhook_endpoints e
              ON i.kind = ANY (e.records)
             AND (cardinality(e.types) = 0 OR i.ntype IS NULL OR i.ntype = ANY (e.types))
             AND (cardinality(e.stages) = 0 OR i.stage = ANY (e.stages))
            ORDER BY i.n, e.id
            RETURNING 1
        )
        SELECT pg_notify('leadscore_outbox', '') WHERE EXISTS (SELECT 1 FROM added)
        """,
        [r.topic for r in rows],
        [r.key for r in rows],
        [r.value for r in rows],
        [r.record_id for r in rows],
        [orjson.dumps(r.headers).decode() if r.headers else None for r in rows],
        [r.kind for r in rows],
        [r.subject for r in rows],
        [r.stage for r in rows],
        [r.type for r in rows],
        [r.seq for r in rows],
    )


async def publish_outbox_again(pg: asyncpg.Connection) -> int:
    """Queue every retained outbox record to be published again (the output topics were lost
    with the broker's log); returns how many."""
    status = await pg.execute("UPDATE outbox SET sent_at = NULL WHERE sent_at IS NOT NULL")
    return int(status.split()[-1])
