"""Scored history by month (migration 0014, services/adapters/postgres/history_partitions.py):
the migration moves stored rows into monthly partitions, the service creates months ahead,
and retention drops whole months (and deletes what the default partition holds past it)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import asyncpg

from services.adapters.postgres import history_partitions as months
from services.settings import Settings
from tests.helpers.database import connect_db, db_fetch, migrate_to

DAY = 86400.0


async def _store(pg: asyncpg.Connection, message_id: str, occurred_at: datetime) -> None:
    await pg.execute(
        "INSERT INTO lead_events (lead_id, message_id, type, occurred_at, event, ruleset_version, "
        "raw_id) VALUES ('u-1', $1, 'page', $2, '{}', 1, 'u-1')",
        message_id,
        occurred_at,
    )


async def _where(settings: Settings) -> dict[str, str]:
    rows = await db_fetch(
        settings, "SELECT message_id, tableoid::regclass::text AS part FROM lead_events"
    )
    return {r["message_id"]: r["part"] for r in rows}


async def test_the_migration_moves_stored_history_into_months(settings: Settings) -> None:
    await migrate_to(settings, "0013")
    now = datetime.now(UTC)
    stored = {
        "recent": now - timedelta(days=3),
        "last-year": now - timedelta(days=300),
        "ancient": now - timedelta(days=3000),  # past the oldest month made: the default
    }
    pg = await connect_db(settings)
    try:
        for message_id, at in stored.items():
            await _store(pg, message_id, at)
        ids_before = dict(await pg.fetch("SELECT message_id, id FROM lead_events"))
    finally:
        await pg.close()

    await migrate_to(settings)

    where = await _where(settings)
    assert where == {
        "recent": months.partition_name(months.month_start(stored["recent"])),
        "last-year": months.partition_name(months.month_start(stored["last-year"])),
        "ancient": "lead_events_default",
    }
    rows = await db_fetch(settings, "SELECT message_id, id FROM lead_events")
    assert dict(rows) == ids_before  # the same rows, ids kept
    kind = await db_fetch(
        settings, "SELECT relkind::text FROM pg_class WHERE relname = 'lead_events'"
    )
    assert kind[0]["relkind"] == "p"
    # New rows go on numbering after the moved ones.
    pg = await connect_db(settings)
    try:
        await _store(pg, "after", now)
        new_id = await pg.fetchval("SELECT id FROM lead_events WHERE message_id = 'after'")
    finally:
        await pg.close()
    assert new_id > max(ids_before.values())


async def test_months_are_made_ahead_and_dropped_whole_past_retention(settings: Settings) -> None:
    await migrate_to(settings)
    now = datetime.now(UTC)
    pg = await connect_db(settings)
    try:
        await _store(pg, "kept", now - timedelta(days=10))
        await _store(pg, "old", now - timedelta(days=200))
        await _store(pg, "very-old", now - timedelta(days=3000))  # in the default partition
        # An event six months ahead: no month of its own yet, so the default partition.
        await _store(pg, "early", months._utc(months.shift(months.month_start(now), 6)))
        before = await months.stored_months(pg)
        assert months.month_start(now) in before
        assert months.shift(months.month_start(now), months.MONTHS_AHEAD) in before

        # Four months later, with 150 days of retention.
        later = now + timedelta(days=4 * 31)
        done = await months.maintain(pg, now=later, retention_days=150, chunk=1000)
        after = await months.stored_months(pg)
    finally:
        await pg.close()

    cutoff = later - timedelta(days=150)
    # Every month wholly older than the cutoff is gone, in one piece; none newer is.
    assert all(months._utc(months.shift(m, 1)) > cutoff for m in after)
    assert {months.partition_name(m) for m in before if m not in after} == set(done.dropped)
    assert done.dropped
    # The months ahead of the new "now" exist, and the early event moved into its month.
    for ahead in range(months.MONTHS_AHEAD + 1):
        assert months.shift(months.month_start(later), ahead) in after
    assert done.deleted_from_default == 1
    where = await _where(settings)
    assert set(where) == {"kept", "early"}
    assert where["early"] == months.partition_name(months.shift(months.month_start(now), 6))


async def test_a_second_instance_skips_its_turn(settings: Settings) -> None:
    await migrate_to(settings)
    first, second = await connect_db(settings), await connect_db(settings)
    try:
        async with first.transaction():
            await first.execute("SELECT pg_advisory_xact_lock($1)", months.MAINTENANCE_LOCK)
            done = await months.maintain(
                second, now=datetime.now(UTC), retention_days=400, chunk=10
            )
        assert done.skipped
    finally:
        await first.close()
        await second.close()
