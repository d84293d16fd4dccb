"""A lead transaction uses its in-memory copy of a lead only while the stored row version is
the copy's: any other writer's change is read back, and a rolled-back batch's changes to a
copy are never seen again."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from services.adapters.postgres import db, rule_set_store
from services.app.container import Container
from services.pipeline.lead_transaction import LeadTransaction
from services.runtime.bootstrap import bootstrap
from services.settings import Settings
from tests.helpers.database import db_fetch


@pytest.fixture
async def cached(settings: Settings) -> AsyncIterator[Container]:
    """A container whose writer keeps a lead cache, on a migrated database."""
    container = bootstrap(settings.with_changes(lead_cache_size=1000))
    await db.migrate(container.db)
    async with container.db.connect() as conn:
        await rule_set_store.ensure_starter(await db.driver(conn))
    yield container
    await container.close()


async def _engagement_set(container: Container, value: float | None) -> tuple[float, bool]:
    """Load u-1 in a transaction; set its engagement when `value` is given. Returns the
    engagement it found and whether the copy came from the cache."""
    found: dict[str, object] = {}

    async def work(tx: LeadTransaction) -> None:
        ws = await tx.lock_leads(["u-1"])
        state = ws.lead("u-1")
        found["engagement"] = state.engagement
        found["hit"] = tx.cache_hits == 1
        if value is not None:
            state.engagement = value
            ws.changed_leads.add("u-1")

    await container.writer.run(work, writer="test")
    return found["engagement"], found["hit"]  # type: ignore[return-value]


async def test_the_copy_is_used_only_while_the_row_is_unchanged(cached: Container) -> None:
    container = cached
    settings = container.settings
    assert container.writer.cache is not None
    assert await _engagement_set(container, 5.0) == (0.0, False)  # new lead
    assert await _engagement_set(container, 6.0) == (5.0, True)  # our copy, still current
    # Another writer (another instance, the challenger's promotion) raises the version.
    conn_rows = await db_fetch(
        settings, "UPDATE leads SET engagement = 42, row_version = row_version + 1 RETURNING 1"
    )
    assert len(conn_rows) == 1
    assert await _engagement_set(container, None) == (42.0, False)  # read back


async def test_a_rolled_back_change_to_the_copy_is_never_seen(cached: Container) -> None:
    container = cached
    await _engagement_set(container, 5.0)
    await _engagement_set(container, 6.0)  # now cached at 6

    async def fails(tx: LeadTransaction) -> None:
        ws = await tx.lock_leads(["u-1"])
        ws.lead("u-1").engagement = 99.0  # the cached object itself, changed in place
        raise RuntimeError("the batch fails after scoring")

    with pytest.raises(RuntimeError):
        await container.writer.run(fails, writer="test")
    assert await _engagement_set(container, None) == (6.0, False)
