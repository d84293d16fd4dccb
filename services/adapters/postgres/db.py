"""The database: engine, the driver connection for batched statements, and migrations."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
from alembic import command
from alembic.config import Config
from sqlalchemy import Connection as SyncConnection
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

from services.adapters.postgres.errors import UNAVAILABLE

__all__ = [
    "UNAVAILABLE",
    "Connection",
    "HeldConnection",
    "Row",
    "connection",
    "create_engine",
    "driver",
    "migrate",
    "transaction",
]

log = logging.getLogger(__name__)
# The driver's connection and row, by the names the rooms above use: they hand a connection
# from one store call to the next and read rows by column, but never run SQL themselves.
Connection = asyncpg.Connection
Row = asyncpg.Record
MIGRATIONS = Path(__file__).resolve().parents[2] / "migrations"
# Held while migrating, so instances starting together do not race each other.
MIGRATION_LOCK = 0x1EAD5C03E


def sqlalchemy_url(url: str) -> str:
    """Accept plain libpq URLs too (postgresql://...): the driver is always asyncpg."""
    for prefix in ("postgresql+asyncpg://", "postgresql://", "postgres://"):
        if url.startswith(prefix):
            return "postgresql+asyncpg://" + url[len(prefix) :]
    raise ValueError("LEADSCORE_DATABASE_URL must be a postgresql:// URL")


def create_engine(url: str, *, pool_size: int = 5) -> AsyncEngine:
    return create_async_engine(sqlalchemy_url(url), pool_size=pool_size, pool_pre_ping=True)


async def driver(conn: AsyncConnection) -> asyncpg.Connection:
    """The asyncpg connection under an SQLAlchemy one, for array-at-once statements."""
    raw = await conn.get_raw_connection()
    return raw.driver_connection  # type: ignore[return-value]


@contextlib.asynccontextmanager
async def connection(db: AsyncEngine) -> AsyncIterator[asyncpg.Connection]:
    """A pooled connection, as the driver's, for the statements of one use case."""
    async with db.connect() as conn:
        yield await driver(conn)


@contextlib.asynccontextmanager
async def transaction(db: AsyncEngine) -> AsyncIterator[asyncpg.Connection]:
    """A pooled connection inside one transaction: committed when the block ends, rolled
    back when it raises."""
    async with connection(db) as pg, pg.transaction():
        yield pg


async def commit_without_waiting_for_disk(pg: asyncpg.Connection) -> None:
    """This transaction's commit returns before its WAL reaches the disk (a database crash
    can then lose it: LEADSCORE_SYNCHRONOUS_COMMIT says when that is acceptable)."""
    await pg.execute("SET LOCAL synchronous_commit TO off")


async def answers(url: str, *, timeout: float) -> None:
    """Raise unless the database at `url` answers a query within `timeout`, on a connection
    of its own: a checkout from a pool whose server hangs does not give way to cancellation
    reliably, and readiness must answer."""
    conn = await asyncpg.connect(
        url.replace("postgresql+asyncpg://", "postgresql://"), timeout=timeout
    )
    try:
        if await conn.fetchval("SELECT 1", timeout=timeout) != 1:
            raise RuntimeError("the database answered SELECT 1 with something else")
    finally:
        conn.terminate()


def alembic_config(connection: SyncConnection) -> Config:
    """Alembic's configuration for migrating over `connection` (the service's, or a test's)."""
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.attributes["connection"] = connection
    return config


def _upgrade(connection: SyncConnection) -> None:
    command.upgrade(alembic_config(connection), "head")


async def migrate(engine: AsyncEngine) -> None:
    """Bring the schema to the latest revision."""
    async with engine.connect() as conn:
        pg = await driver(conn)
        await pg.execute("SELECT pg_advisory_lock($1)", MIGRATION_LOCK)
        try:
            await conn.run_sync(_upgrade)
            await conn.commit()
        finally:
            await pg.execute("SELECT pg_advisory_unlock($1)", MIGRATION_LOCK)
    log.info("database schema is up to date")


class HeldConnection:
    """A database connection a consumer lane keeps from one batch to the next.

    Taking a connection from the pool costs three round trips (SQLAlchemy's liveness check:
    BEGIN, a ping, ROLLBACK), as many as a small batch's locking; a consumer lane that
    commits a batch every few milliseconds, and the outbox relay that publishes after each,
    keep their own instead. The liveness check is then the
    batch itself: a connection that fails with the database away is dropped, and the next
    batch connects afresh (tests/integration/test_round_trips.py counts the statements).
    """

    def __init__(self, db: AsyncEngine) -> None:
        self.db = db
        self._conn: AsyncConnection | None = None

    async def driver(self) -> asyncpg.Connection:
        if self._conn is None:
            self._conn = await self.db.connect()
        return await driver(self._conn)

    @contextlib.asynccontextmanager
    async def use(self) -> AsyncIterator[asyncpg.Connection]:
        """The connection for one unit of work. One the database dropped, or one left inside
        a transaction (cancelled mid-rollback), is not used again."""
        pg = await self.driver()
        try:
            yield pg
        except BaseException as exc:
            if isinstance(exc, UNAVAILABLE) or pg.is_closed() or pg.is_in_transaction():
                await self.drop()
            raise

    async def drop(self) -> None:
        """Forget the connection (it failed): never given back to the pool for reuse."""
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(Exception):
                await conn.invalidate()
            with contextlib.suppress(Exception):
                await conn.close()

    async def release(self) -> None:
        """Give the connection back to the pool (the lane is stopping)."""
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(Exception):
                await conn.close()
