"""Background jobs' rows (re-scoring, impact reports): created, advanced, finished, read."""

from __future__ import annotations

import uuid
from typing import Any

import asyncpg
import orjson


async def create_job(
    pg: asyncpg.Connection, job_id: str, kind: str, params: dict[str, Any], *, by: str
) -> None:
    await pg.execute(
        "INSERT INTO jobs (id, kind, status, params, created_by) "
        "VALUES ($1, $2, 'running', $3::jsonb, $4)",
        uuid.UUID(job_id),
        kind,
        orjson.dumps(params).decode(),
        by,
    )


async def save_progress(pg: asyncpg.Connection, job_id: str, done: int, total: int | None) -> None:
    await pg.execute(
        "UPDATE jobs SET done = $2, total = $3, updated_at = now() WHERE id = $1",
        uuid.UUID(job_id),
        done,
        total,
    )


async def finish_job(
    pg: asyncpg.Connection,
    job_id: str,
    *,
    status: str,
    result: dict[str, Any] | None,
    error: str | None,
    done: int,
    total: int | None,
) -> None:
    await pg.execute(
        "UPDATE jobs SET status = $2, result = $3::jsonb, error = $4, done = $5, "
        "total = coalesce($6, total), updated_at = now(), finished_at = now() "
        "WHERE id = $1",
        uuid.UUID(job_id),
        status,
        orjson.dumps(result).decode() if result else None,
        error,
        done,
        total,
    )


async def job(pg: asyncpg.Connection, job_id: uuid.UUID) -> asyncpg.Record | None:
    return await pg.fetchrow(
        "SELECT id::text, kind, status, params::text, done, total, result::text, error, "
        "created_by, created_at, updated_at, finished_at FROM jobs WHERE id = $1",
        job_id,
    )
