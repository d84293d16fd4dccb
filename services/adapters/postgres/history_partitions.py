"""The months of scored history: one partition of `lead_events` per calendar month of event
time (migration 0014), created ahead of time and dropped whole when retention passes them.

Each function runs in its own transaction (the relay calls them about once a minute), under
an advisory lock so that two instances never change partitions at the same time: the second
one skips its turn.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from datetime import UTC, date, datetime

import asyncpg

log = logging.getLogger(__name__)

# Months created ahead of the current one: an event may be up to a day ahead (intake), and a
# missed maintenance run must not send the next month's events to the default partition.
MONTHS_AHEAD = 2
MAINTENANCE_LOCK = 0x1EAD5C0DE
# Waiting longer than this for a lock on the history (a long report reading it) is not worth
# it: the month is dropped on a later run.
LOCK_TIMEOUT = "2s"
_MONTH = re.compile(r"^lead_events_(\d{4})_(\d{2})$")


def month_start(moment: datetime) -> date:
    return moment.astimezone(UTC).date().replace(day=1)


def shift(first: date, months: int) -> date:
    """The first day of the month `months` after (or before) `first`'s."""
    index = first.year * 12 + first.month - 1 + months
    return date(index // 12, index % 12 + 1, 1)


def partition_name(month: date) -> str:
    return f"lead_events_{month:%Y_%m}"


@dataclass(frozen=True, slots=True)
class Maintenance:
    """What one run did."""

    created: tuple[str, ...] = ()
    dropped: tuple[str, ...] = ()
    deleted_from_default: int = 0
    skipped: bool = False


async def stored_months(pg: asyncpg.Connection) -> list[date]:
    """The months that have a partition, oldest first."""
    rows = await pg.fetch(
        "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
        "WHERE i.inhparent = 'lead_events'::regclass"
    )
    months = []
    for row in rows:
        found = _MONTH.match(row["relname"])
        if found:
            months.append(date(int(found[1]), int(found[2]), 1))
    return sorted(months)


async def add_month(pg: asyncpg.Connection, month: date) -> None:
    """Give `month` a partition. Events of that month already in the default partition (late
    or early ones, stored before the month had a partition) move into it first, since the
    default partition may not hold rows of a range that has its own."""
    name = partition_name(month)
    following = shift(month, 1)
    await pg.execute(f"CREATE TABLE {name} (LIKE lead_events INCLUDING DEFAULTS)")
    await pg.execute(
        f"WITH moved AS (DELETE FROM lead_events_default "
        f"WHERE occurred_at >= $1 AND occurred_at < $2 RETURNING *) "
        f"INSERT INTO {name} SELECT * FROM moved",
        _utc(month),
        _utc(following),
    )
    await pg.execute(
        f"ALTER TABLE lead_events ATTACH PARTITION {name} "
        f"FOR VALUES FROM ('{month.isoformat()}') TO ('{following.isoformat()}')"
    )


async def maintain(
    pg: asyncpg.Connection, *, now: datetime, retention_days: float, chunk: int
) -> Maintenance:
    """Create the months ahead that are missing, drop the months wholly older than retention,
    and delete (one chunk) what the default partition holds older than retention."""
    cutoff = now.timestamp() - retention_days * 86400
    async with pg.transaction():
        if not await pg.fetchval("SELECT pg_try_advisory_xact_lock($1)", MAINTENANCE_LOCK):
            return Maintenance(skipped=True)
        await pg.execute(f"SET LOCAL lock_timeout = '{LOCK_TIMEOUT}'")
        months = await stored_months(pg)
        current = month_start(now)
        created = []
        for ahead in range(MONTHS_AHEAD + 1):
            month = shift(current, ahead)
            if month not in months:
                await add_month(pg, month)
                created.append(partition_name(month))
        dropped = []
        for month in months:
            if _utc(shift(month, 1)).timestamp() <= cutoff:
                await pg.execute(f"DROP TABLE {partition_name(month)}")
                dropped.append(partition_name(month))
        status = await pg.execute(
            "DELETE FROM lead_events_default WHERE ctid IN (SELECT ctid FROM lead_events_default "
            "WHERE occurred_at < to_timestamp($1) LIMIT $2)",
            cutoff,
            chunk,
        )
    done = Maintenance(tuple(created), tuple(dropped), int(status.split()[-1]))
    if created or dropped:
        log.info("history months: created %s, dropped %s", created or "none", dropped or "none")
    return done


def _utc(month: date) -> datetime:
    return datetime(month.year, month.month, 1, tzinfo=UTC)
