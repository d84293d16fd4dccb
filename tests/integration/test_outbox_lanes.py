"""The outbox relay publishes by lane: relays in several instances publish at once, and each
key's records stay in order on the topic."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import asyncpg
import pytest

from services.adapters import kafka
from services.adapters.postgres import db
from services.metrics import Metrics
from services.pipeline.relay import OUTBOX_LANES, RELAY_LOCK, OutboxRelay
from services.settings import Settings
from tests.helpers.database import db_fetch
from tests.helpers.kafka import read_all


@asynccontextmanager
async def relay(settings: Settings) -> AsyncIterator[OutboxRelay]:
    """A relay as one instance runs it: its own connection pool and producer."""
    assert settings.database_url is not None
    engine = db.create_engine(settings.database_url.get_secret_value())
    producer = kafka.make_producer(settings)
    await producer.start()
    running = OutboxRelay(settings=settings, db=engine, producer=producer, metrics=Metrics())
    try:
        yield running
    finally:
        await running.held.release()  # as the service's container does on shutdown
        await producer.stop()
        await engine.dispose()


async def connect(settings: Settings) -> asyncpg.Connection:
    assert settings.database_url is not None
    return await asyncpg.connect(settings.database_url.get_secret_value().replace("+asyncpg", ""))


async def enqueue(settings: Settings, keys: int, per_key: int) -> None:
    """`per_key` records for each of `keys` keys, interleaved, values `<key>:<n>` in order."""
    rows = [(f"lead-{k}", n) for n in range(per_key) for k in range(keys)]
    await db_fetch(
        settings,
        "INSERT INTO outbox (topic, key, value, record_id) "
        "SELECT $1, convert_to(k, 'UTF8'), convert_to(k || ':' || n, 'UTF8'), k || ':' || n "
        "FROM unnest($2::text[], $3::int[]) WITH ORDINALITY AS u(k, n, o) ORDER BY o",
        settings.topic_transitions,
        [k for k, _ in rows],
        [n for _, n in rows],
    )


@pytest.fixture
async def migrated(settings: Settings) -> Settings:
    assert settings.database_url is not None
    engine = db.create_engine(settings.database_url.get_secret_value())
    try:
        await db.migrate(engine)
    finally:
        await engine.dispose()
    await kafka.ensure_topics(settings)
    return settings


async def test_a_lane_another_relay_holds_does_not_stop_the_other_lanes(migrated):
    settings = migrated
    await enqueue(settings, keys=64, per_key=3)
    lanes = {r["lane"] for r in await db_fetch(settings, "SELECT DISTINCT lane FROM outbox")}
    assert len(lanes) > 4 and lanes <= set(range(OUTBOX_LANES))  # keys spread over lanes
    busy = min(lanes)
    other = await connect(settings)
    try:
        # Another instance's relay in the middle of publishing lane `busy`.
        transaction = other.transaction()
        await transaction.start()
        await other.execute("SELECT pg_advisory_xact_lock($1)", RELAY_LOCK + busy)
        async with relay(settings) as mine:
            published = await mine.drain()
            pending = await db_fetch(
                settings, "SELECT DISTINCT lane FROM outbox WHERE sent_at IS NULL"
            )
            assert [r["lane"] for r in pending] == [busy]
            await transaction.rollback()
            published += await mine.drain()
    finally:
        await other.close()
    assert published == 64 * 3
    assert await db_fetch(settings, "SELECT id FROM outbox WHERE sent_at IS NULL") == []


async def test_two_relays_publish_at_once_and_every_key_stays_in_order(migrated):
    settings = migrated.with_changes(outbox_batch=50)
    keys, per_key = 200, 25
    await enqueue(settings, keys=keys, per_key=per_key)
    async with relay(settings) as first, relay(settings) as second:
        await first.join()
        await second.join()
        mine = await first.join()  # now it knows of the second one
        theirs = await second.join()
        assert sorted(mine + theirs) == list(range(OUTBOX_LANES))  # the lanes shared out
        assert len(mine) == len(theirs)
        counts = await asyncio.gather(first.drain(), second.drain())
    assert sum(counts) == keys * per_key  # every record published once
    assert min(counts) > 0  # both relays published: neither waited for the other to finish
    records = await read_all(settings, settings.topic_transitions, expect=keys * per_key)
    # What the topic holds, to tell a broker that lost records from a reader that missed them.
    where = sorted({(r.partition, r.offset) for r in records})
    assert len(records) == keys * per_key, (len(records), len(where), where[:3], where[-3:])
    seen: dict[str, list[int]] = {}
    for record in records:
        key, n = record.value.decode().split(":")
        assert key == record.key.decode()
        seen.setdefault(key, []).append(int(n))
    assert len(seen) == keys
    for values in seen.values():
        assert values == sorted(values)  # each key's records in the order they were written
        assert set(values) == set(range(per_key))


async def test_the_lanes_of_a_relay_that_died_are_taken_over(migrated):
    settings = migrated
    # A relay killed a moment ago: still registered, so it keeps its share of the lanes.
    await db_fetch(
        settings, "INSERT INTO outbox_relays (relay_id, seen_at) VALUES ('~dead', now())"
    )
    await enqueue(settings, keys=64, per_key=2)
    async with relay(settings) as mine:
        lanes = await mine.join()
        assert 0 < len(lanes) < OUTBOX_LANES  # the dead one's share is not among them
        await mine.drain()
        left = await db_fetch(settings, "SELECT DISTINCT lane FROM outbox WHERE sent_at IS NULL")
        assert {r["lane"] for r in left} and not {r["lane"] for r in left} & set(lanes)
        # Once its records have waited ORPHANED_SECONDS, any relay takes them.
        await db_fetch(settings, "UPDATE outbox SET created_at = now() - interval '1 minute'")
        await mine.drain()
    assert await db_fetch(settings, "SELECT id FROM outbox WHERE sent_at IS NULL") == []
