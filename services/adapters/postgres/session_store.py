"""Console sessions' rows (services/app/sessions.py decides who may have one and for how
long): each keyed by the SHA-256 of the browser's secret, never the secret itself."""

from __future__ import annotations

from datetime import datetime

import asyncpg


async def insert_session(
    pg: asyncpg.Connection,
    *,
    key: str,
    token_name: str,
    role: str,
    token_hash: str,
    csrf: str,
    client: str | None,
    user_agent: str | None,
    now: datetime,
) -> None:
    await pg.execute(
        "INSERT INTO console_sessions (id, token_name, role, token_hash, csrf, "
        "client, user_agent, created_at, last_seen_at) "
        "VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $8)",
        key,
        token_name,
        role,
        token_hash,
        csrf,
        client,
        user_agent,
        now,
    )


async def keep_newest(pg: asyncpg.Connection, token_name: str, keep: int) -> None:
    """End the token's sessions past its `keep` newest."""
    await pg.execute(
        "DELETE FROM console_sessions WHERE token_name = $1 AND id IN ("
        "  SELECT id FROM console_sessions WHERE token_name = $1"
        "  ORDER BY created_at DESC OFFSET $2)",
        token_name,
        keep,
    )


async def session(pg: asyncpg.Connection, key: str) -> asyncpg.Record | None:
    return await pg.fetchrow("SELECT * FROM console_sessions WHERE id = $1", key)


async def touch(pg: asyncpg.Connection, key: str, now: datetime) -> None:
    await pg.execute("UPDATE console_sessions SET last_seen_at = $2 WHERE id = $1", key, now)


async def delete_session(pg: asyncpg.Connection, key: str) -> str | None:
    """End one session; the name of its token, None if there was none."""
    owner: str | None = await pg.fetchval(
        "DELETE FROM console_sessions WHERE id = $1 RETURNING token_name", key
    )
    return owner


async def delete_sessions(pg: asyncpg.Connection, token_name: str | None) -> int:
    """End every session of a token, or every session at all (None); how many ended."""
    ended = await pg.fetch(
        "DELETE FROM console_sessions WHERE $1::text IS NULL OR token_name = $1 RETURNING id",
        token_name,
    )
    return len(ended)


async def sessions(pg: asyncpg.Connection) -> list[asyncpg.Record]:
    """Every session, newest first, without the CSRF token."""
    return await pg.fetch(
        "SELECT id, token_name, role, token_hash, client, user_agent, created_at, "
        "last_seen_at FROM console_sessions ORDER BY created_at DESC, id"
    )


async def purge_expired(
    pg: asyncpg.Connection, *, idle_since: datetime, born_before: datetime
) -> None:
    """End the sessions idle since `idle_since` or opened before `born_before`."""
    await pg.execute(
        "DELETE FROM console_sessions WHERE last_seen_at <= $1 OR created_at <= $2",
        idle_since,
        born_before,
    )
