"""Outbound endpoints and their deliveries in PostgreSQL (migration 0017).

Deliveries are queued by outbox_store.enqueue in the writer's transaction; everything here
is the dispatcher's and the admins' side: claiming the next deliveries of an endpoint (the
first waiting one of each subject, so one lead's records go out in order), recording each
attempt's outcome, the log, re-delivery, and the CRM writers' newest move per record.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from typing import Any

import asyncpg
import orjson

ENDPOINT_COLUMNS = (
    "id, name, kind, url, records, types, stages, paused, retry_hours, rate_per_second, "
    "mapping::text AS mapping, created_by, created_at, updated_at"
)
COUNTS = (
    "(SELECT count(*) FROM webhook_deliveries d WHERE d.endpoint_id = e.id "
    "AND d.state = 'pending') AS pending, "
    "(SELECT count(*) FROM webhook_deliveries d WHERE d.endpoint_id = e.id "
    "AND d.state = 'failed') AS failed"
)
DELIVERY_COLUMNS = (
    "id, record_id, kind, subject, seq, state, attempts, queued_at, "
    "CASE WHEN state = 'pending' THEN due_at END AS due_at, last_attempt_at, delivered_at, "
    "last_status, last_latency_ms, reason, response"
)
# Stored answers are cut to this many characters.
RESPONSE_EXCERPT = 500
REASON_LIMIT = 300


def endpoint_doc(row: asyncpg.Record) -> dict[str, Any]:
    doc = dict(row)
    doc.pop("secret", None)
    doc["mapping"] = orjson.loads(doc["mapping"]) if doc.get("mapping") else None
    return doc


async def create_endpoint(
    pg: asyncpg.Connection, endpoint_id: str, fields: Mapping[str, Any], secret: bytes, by: str
) -> asyncpg.Record:
    row = await pg.fetchrow(
        "INSERT INTO webhook_endpoints (id, name, kind, url, secret, records, types, stages, "
        "paused, retry_hours, rate_per_second, mapping, created_by) "
        "VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12::jsonb, $13) "
        f"RETURNING {ENDPOINT_COLUMNS}, 0::bigint AS pending, 0::bigint AS failed",
        endpoint_id,
        fields["name"],
        fields["kind"],
        fields["url"],
        secret,
        list(fields["records"]),
        list(fields["types"]),
        list(fields["stages"]),
        fields["paused"],
        fields["retry_hours"],
        fields["rate_per_second"],
        orjson.dumps(fields["mapping"]).decode() if fields.get("mapping") else None,
        by,
    )
    assert row is not None  # INSERT ... RETURNING
    return row


async def count_endpoints(pg: asyncpg.Connection) -> int:
    return int(await pg.fetchval("SELECT count(*) FROM webhook_endpoints"))


async def update_endpoint(
    pg: asyncpg.Connection, endpoint_id: str, changes: Mapping[str, Any]
) -> asyncpg.Record | None:
    """Apply the given changes (column: value); None if there is no such endpoint."""
    sets, values = [], [endpoint_id]
    for column, value in changes.items():
        values.append(orjson.dumps(value).decode() if column == "mapping" else value)
        cast = "::jsonb" if column == "mapping" else ""
        sets.append(f"{column} = ${len(values)}{cast}")
    sets.append("updated_at = now()")
    return await pg.fetchrow(
        f"UPDATE webhook_endpoints e SET {', '.join(sets)} WHERE id = $1 "
        f"RETURNING {ENDPOINT_COLUMNS}, {COUNTS}",
        *values,
    )


async def delete_endpoint(pg: asyncpg.Connection, endpoint_id: str) -> bool:
    status = await pg.execute("DELETE FROM webhook_endpoints WHERE id = $1", endpoint_id)
    return status.endswith(" 1")


async def endpoint(pg: asyncpg.Connection, endpoint_id: str) -> asyncpg.Record | None:
    return await pg.fetchrow(
        f"SELECT {ENDPOINT_COLUMNS}, {COUNTS} FROM webhook_endpoints e WHERE id = $1",
        endpoint_id,
    )


async def endpoint_with_secret(pg: asyncpg.Connection, endpoint_id: str) -> asyncpg.Record | None:
    """The dispatcher's view: the endpoint with its encrypted secret."""
    return await pg.fetchrow(
        f"SELECT {ENDPOINT_COLUMNS}, secret FROM webhook_endpoints WHERE id = $1", endpoint_id
    )


async def endpoints(pg: asyncpg.Connection) -> list[asyncpg.Record]:
    return await pg.fetch(
        f"SELECT {ENDPOINT_COLUMNS}, {COUNTS} FROM webhook_endpoints e ORDER BY id"
    )


async def due_endpoints(pg: asyncpg.Connection) -> list[str]:
    """Endpoints, not paused, with a delivery due now."""
    rows = await pg.fetch(
        "SELECT e.id FROM webhook_endpoints e WHERE NOT e.paused AND EXISTS ("
        "SELECT 1 FROM webhook_deliveries d WHERE d.endpoint_id = e.id AND d.state = 'pending' "
        "AND d.due_at <= now() AND (d.claimed_until IS NULL OR d.claimed_until < now()))"
    )
    return [r["id"] for r in rows]


async def claim_heads(
    pg: asyncpg.Connection, endpoint_id: str, limit: int, lease_seconds: float
) -> list[asyncpg.Record]:
    """Claim, for `lease_seconds`, up to `limit` deliveries that are due and first of their
    subject: a subject's next record waits until the one before it is delivered or set
    aside. A claim another instance holds is skipped; one that expired (its holder died
    mid-delivery) is taken over, and the record goes out again under the same id."""
    return await pg.fetch(
        """
        WITH heads AS (
            SELECT DISTINCT ON (subject) id, due_at, claimed_until
            FROM webhook_deliveries
            WHERE endpoint_id = $1 AND state = 'pending'
            ORDER BY subject, id
        ), picked AS (
            SELECT id FROM heads
            WHERE due_at <= now() AND (claimed_until IS NULL OR claimed_until < now())
            ORDER BY id LIMIT $2
        )
        UPDATE webhook_deliveries d
        SET claimed_until = now() + make_interval(secs => $3)
        FROM picked
        WHERE d.id = picked.id AND d.state = 'pending'
          AND (d.claimed_until IS NULL OR d.claimed_until < now())
        RETURNING d.id, d.record_id, d.kind, d.subject, d.seq, d.payload, d.attempts,
                  d.queued_at, d.retry_from
        """,
        endpoint_id,
        limit,
        lease_seconds,
    )


async def record_outcomes(pg: asyncpg.Connection, outcomes: Sequence[Mapping[str, Any]]) -> None:
    """One attempt's outcome per delivery: its new state (`delivered`, `pending` again at
    `due_in` seconds, `failed`, `skipped`), the answer's status, latency, reason, excerpt."""
    if not outcomes:
        return
    await pg.execute(
        """
        UPDATE webhook_deliveries d SET
            state = o.state,
            attempts = d.attempts + o.tried,
            due_at = CASE WHEN o.state = 'pending' THEN now() + make_interval(secs => o.due_in)
                          ELSE d.due_at END,
            claimed_until = NULL,
            last_attempt_at = CASE WHEN o.tried = 1 THEN now() ELSE d.last_attempt_at END,
            delivered_at = CASE WHEN o.state IN ('delivered', 'skipped') THEN now()
                               ELSE d.delivered_at END,
            last_status = CASE WHEN o.tried = 1 THEN o.status ELSE d.last_status END,
            last_latency_ms = coalesce(o.latency, d.last_latency_ms),
            reason = o.reason,
            response = coalesce(o.response, d.response)
        FROM unnest($1::bigint[], $2::text[], $3::int[], $4::float8[], $5::int[], $6::float8[],
                    $7::text[], $8::text[]) AS o(id, state, tried, due_in, status, latency,
                                                 reason, response)
        WHERE d.id = o.id
        """,
        [o["id"] for o in outcomes],
        [o["state"] for o in outcomes],
        [o.get("tried", 1) for o in outcomes],
        [o.get("due_in", 0.0) for o in outcomes],
        [o.get("status") for o in outcomes],
        [o.get("latency") for o in outcomes],
        [(o.get("reason") or None) and o["reason"][:REASON_LIMIT] for o in outcomes],
        [(o.get("response") or None) and o["response"][:RESPONSE_EXCERPT] for o in outcomes],
    )


async def unpaused(pg: asyncpg.Connection, endpoint_ids: Sequence[str]) -> set[str]:
    """Those of the endpoints that exist and are not paused."""
    rows = await pg.fetch(
        "SELECT id FROM webhook_endpoints WHERE id = ANY($1::text[]) AND NOT paused",
        list(endpoint_ids),
    )
    return {r["id"] for r in rows}


async def set_aside_due(pg: asyncpg.Connection, endpoint_id: str, reason: str) -> int:
    """Set every waiting, unclaimed delivery of the endpoint aside (failed) with the
    reason, without counting an attempt; returns how many."""
    status = await pg.execute(
        "UPDATE webhook_deliveries SET state = 'failed', reason = $2, claimed_until = NULL "
        "WHERE endpoint_id = $1 AND state = 'pending' "
        "AND (claimed_until IS NULL OR claimed_until < now())",
        endpoint_id,
        reason[:REASON_LIMIT],
    )
    return int(status.split()[-1])


async def release(pg: asyncpg.Connection, ids: Iterable[int]) -> None:
    """Give claims back unattempted (the instance is stopping)."""
    await pg.execute(
        "UPDATE webhook_deliveries SET claimed_until = NULL WHERE id = ANY($1::bigint[]) "
        "AND state = 'pending'",
        list(ids),
    )


async def newest_written(
    pg: asyncpg.Connection, endpoint_id: str, subjects: Iterable[str]
) -> dict[str, int]:
    rows = await pg.fetch(
        "SELECT subject, seq FROM crm_writes WHERE endpoint_id = $1 AND subject = ANY($2)",
        endpoint_id,
        list(subjects),
    )
    return {r["subject"]: r["seq"] for r in rows}


async def note_written(
    pg: asyncpg.Connection, endpoint_id: str, written: Mapping[str, int]
) -> None:
    """Remember each subject's newest move written to the CRM (never going back)."""
    if not written:
        return
    await pg.execute(
        "INSERT INTO crm_writes (endpoint_id, subject, seq) "
        "SELECT $1, s, q FROM unnest($2::text[], $3::int[]) AS u(s, q) "
        "ON CONFLICT (endpoint_id, subject) DO UPDATE "
        "SET seq = greatest(crm_writes.seq, excluded.seq)",
        endpoint_id,
        list(written),
        list(written.values()),
    )


async def delivery_log(
    pg: asyncpg.Connection,
    endpoint_id: str,
    *,
    state: str | None,
    subject: str | None,
    before_id: int | None,
    limit: int,
) -> list[asyncpg.Record]:
    """An endpoint's deliveries, newest first."""
    return await pg.fetch(
        f"SELECT {DELIVERY_COLUMNS} FROM webhook_deliveries WHERE endpoint_id = $1 "
        "AND ($2::text IS NULL OR state = $2) AND ($3::text IS NULL OR subject = $3) "
        "AND ($4::bigint IS NULL OR id < $4) ORDER BY id DESC LIMIT $5",
        endpoint_id,
        state,
        subject,
        before_id,
        limit,
    )


async def redeliver(
    pg: asyncpg.Connection,
    endpoint_id: str,
    *,
    delivery_id: int | None,
    failed_since: datetime | None,
) -> int:
    """Queue one delivery (any state but pending), or every one set aside since a time,
    to go out again now, with a fresh retry window; returns how many."""
    if delivery_id is not None:
        status = await pg.execute(
            "UPDATE webhook_deliveries SET state = 'pending', due_at = now(), "
            "retry_from = now(), claimed_until = NULL, reason = NULL "
            "WHERE endpoint_id = $1 AND id = $2 AND state <> 'pending'",
            endpoint_id,
            delivery_id,
        )
    else:
        status = await pg.execute(
            "UPDATE webhook_deliveries SET state = 'pending', due_at = now(), "
            "retry_from = now(), claimed_until = NULL, reason = NULL "
            "WHERE endpoint_id = $1 AND state = 'failed' AND last_attempt_at >= $2",
            endpoint_id,
            failed_since,
        )
    return int(status.split()[-1])


async def has_delivery(pg: asyncpg.Connection, endpoint_id: str, delivery_id: int) -> bool:
    return bool(
        await pg.fetchval(
            "SELECT 1 FROM webhook_deliveries WHERE endpoint_id = $1 AND id = $2",
            endpoint_id,
            delivery_id,
        )
    )


async def backlog(pg: asyncpg.Connection) -> list[asyncpg.Record]:
    """Per endpoint: deliveries waiting and set aside, and the oldest waiting one's age."""
    return await pg.fetch(
        "SELECT e.id, "
        "count(d.id) FILTER (WHERE d.state = 'pending') AS pending, "
        "count(d.id) FILTER (WHERE d.state = 'failed') AS failed, "
        "coalesce(extract(epoch FROM now() - min(d.queued_at) FILTER "
        "(WHERE d.state = 'pending')), 0)::float8 AS oldest_seconds "
        "FROM webhook_endpoints e LEFT JOIN webhook_deliveries d "
        "ON d.endpoint_id = e.id AND d.state IN ('pending', 'failed') GROUP BY e.id"
    )


async def purge_done(pg: asyncpg.Connection, older_than_hours: float, chunk: int) -> int:
    """Delete delivered and skipped deliveries older than the retention, a chunk at a time."""
    status = await pg.execute(
        "DELETE FROM webhook_deliveries WHERE id IN (SELECT id FROM webhook_deliveries "
        "WHERE state IN ('delivered', 'skipped') "
        "AND delivered_at < now() - make_interval(secs => $1) LIMIT $2)",
        older_than_hours * 3600,
        chunk,
    )
    return int(status.split()[-1])
