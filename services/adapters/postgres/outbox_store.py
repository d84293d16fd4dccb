"""The outbox: records appended in the writer's transaction, then claimed, published and
marked by the relay (services/pipeline/relay.py), which shares its lanes out among the live
relays registered here.

The writer's functions run inside the caller's transaction and never commit: a batch's state
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


# -- the relay's side ---------------------------------------------------------------------


async def register_relay(pg: asyncpg.Connection, relay_id: str, ttl_seconds: float) -> list[str]:
    """Register (or refresh) `relay_id`; the relays registered within `ttl_seconds`, not
    counting this registration (the statement does not see its own insert)."""
    rows = await pg.fetch(
        "WITH me AS (INSERT INTO outbox_relays (relay_id, seen_at) VALUES ($1, now()) "
        "ON CONFLICT (relay_id) DO UPDATE SET seen_at = now()) "
        "SELECT relay_id FROM outbox_relays "
        "WHERE seen_at > now() - make_interval(secs => $2) "
        "ORDER BY relay_id",
        relay_id,
        ttl_seconds,
    )
    return [r["relay_id"] for r in rows]


async def unregister_relay(pg: asyncpg.Connection, relay_id: str) -> None:
    await pg.execute("DELETE FROM outbox_relays WHERE relay_id = $1", relay_id)


async def waiting_lanes(
    pg: asyncpg.Connection, lanes: int, *, besides: list[int], older_than: float
) -> list[int]:
    """Lanes (other than `besides`) whose oldest pending record waited over `older_than` s."""
    rows = await pg.fetch(
        "SELECT n FROM generate_series(0, $1 - 1) AS n WHERE n <> ALL($2::int[]) AND "
        "(SELECT created_at FROM outbox WHERE lane = n AND sent_at IS NULL "
        "AND failed_at IS NULL ORDER BY id LIMIT 1) < now() - make_interval(secs => $3)",
        lanes,
        besides,
        older_than,
    )
    return [r["n"] for r in rows]


async def try_lock_lanes(pg: asyncpg.Connection, lanes: list[int], lock_base: int) -> list[int]:
    """The lanes whose lock (`lock_base` + lane) this transaction took; others hold the rest."""
    rows = await pg.fetch(
        "SELECT n FROM unnest($1::int[]) AS n WHERE pg_try_advisory_xact_lock($2::bigint + n)",
        lanes,
        lock_base,
    )
    return [r["n"] for r in rows]


async def pending(pg: asyncpg.Connection, lanes: list[int], limit: int) -> list[asyncpg.Record]:
    """The first `limit` records waiting in `lanes`, in id order."""
    return await pg.fetch(
        "SELECT id, topic, key, value, headers::text AS headers FROM outbox "
        "WHERE lane = ANY($1::int[]) AND sent_at IS NULL AND failed_at IS NULL "
        "ORDER BY id LIMIT $2",
        lanes,
        limit,
    )


async def mark_sent(pg: asyncpg.Connection, ids: list[int]) -> None:
    await pg.execute("UPDATE outbox SET sent_at = now() WHERE id = ANY($1::bigint[])", ids)


async def mark_failed(pg: asyncpg.Connection, ids: list[int], errors: list[str]) -> None:
    """Set records the broker refused for good aside, each with its error."""
    await pg.execute(
        "UPDATE outbox SET failed_at = now(), error = e FROM "
        "unnest($1::bigint[], $2::text[]) AS f(id, e) WHERE outbox.id = f.id",
        ids,
        errors,
    )


@dataclass(frozen=True, slots=True)
class Backlog:
    pending: int
    oldest_seconds: float
    failed: int


async def backlog(pg: asyncpg.Connection) -> Backlog:
    """Records pending, the age of the oldest, and records set aside."""
    row = await pg.fetchrow(
        "SELECT count(*) FILTER (WHERE failed_at IS NULL) AS pending, "
        "coalesce(extract(epoch FROM now() - min(created_at) "
        "FILTER (WHERE failed_at IS NULL)), 0) AS age, "
        "count(*) FILTER (WHERE failed_at IS NOT NULL) AS failed "
        "FROM outbox WHERE sent_at IS NULL"
    )
    assert row is not None  # an aggregate without GROUP BY returns one row
    return Backlog(int(row["pending"]), float(row["age"]), int(row["failed"]))


async def purge(pg: asyncpg.Connection, *, retention_seconds: float, chunk: int) -> None:
    """Forget relays gone for an hour, and one chunk of records sent before the retention."""
    await pg.execute("DELETE FROM outbox_relays WHERE seen_at < now() - interval '1 hour'")
    await pg.execute(
        "DELETE FROM outbox WHERE id IN (SELECT id FROM outbox WHERE sent_at < now() - "
        "make_interval(secs => $1) ORDER BY id LIMIT $2)",
        retention_seconds,
        chunk,
    )
