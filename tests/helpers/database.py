"""Reading a test's database: what was committed, and the schema at a given migration."""

from __future__ import annotations

from typing import Any

import asyncpg

from services.settings import Settings


async def connect_db(settings: Settings) -> asyncpg.Connection:
    """A connection of the test's own to its database (the caller closes it)."""
    assert settings.database_url is not None
    return await asyncpg.connect(settings.database_url.get_secret_value().replace("+asyncpg", ""))


async def db_fetch(settings: Settings, query: str, *args: Any) -> list[asyncpg.Record]:
    conn = await connect_db(settings)
    try:
        return await conn.fetch(query, *args)
    finally:
        await conn.close()


async def migrate_to(settings: Settings, revision: str | None = None) -> None:
    """Bring the test's database to `revision` (None: the latest), as an upgrade would."""
    from alembic import command

    from services.adapters.postgres.db import alembic_config, create_engine, migrate

    assert settings.database_url is not None
    engine = create_engine(settings.database_url.get_secret_value())
    try:
        if revision is None:
            await migrate(engine)
            return
        async with engine.connect() as conn:
            await conn.run_sync(lambda c: command.upgrade(alembic_config(c), revision))
            await conn.commit()
    finally:
        await engine.dispose()


async def committed(settings: Settings) -> int:
    """How many input records the service has committed (the sum of its stored offsets)."""
    tables = "SELECT 1 FROM pg_tables WHERE tablename = 'consumer_offsets'"
    if not await db_fetch(settings, tables):
        return 0  # the service has not migrated yet
    rows = await db_fetch(
        settings,
        "SELECT coalesce(sum(next_offset), 0) AS n FROM consumer_offsets WHERE topic = $1",
        settings.topic_events,
    )
    return int(rows[0]["n"])


async def committed_at_least(settings: Settings, n: int) -> bool:
    return await committed(settings) >= n


async def drained(settings: Settings, produced: int) -> bool:
    """Every produced record is committed and every outbox record published."""
    rows = await db_fetch(
        settings,
        "SELECT (SELECT coalesce(sum(next_offset), 0) FROM consumer_offsets WHERE topic = $1) "
        "AS done, (SELECT count(*) FROM outbox WHERE sent_at IS NULL AND failed_at IS NULL) "
        "AS pending",
        settings.topic_events,
    )
    return bool(rows[0]["done"] == produced and rows[0]["pending"] == 0)
