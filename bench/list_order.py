"""Why the lead list sorts by the score at each lead's last event: the two orders on
1,000,000 leads in PostgreSQL.

The stored order reads the `leads_by_score` index (the expression `fit + engagement`,
highest first, then the id). An order by the score as of now must decay every lead's
engagement to the reading time first: a pass over every row and a sort, on every page.

.venv/bin/python -m bench.list_order [--leads 1000000] [--repeat 5]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import asyncpg

from services.runtime.embedded import EmbeddedPostgres

HALF_LIFE_SECONDS = 30 * 86400.0
STORED = (
    "SELECT lead_id, fit + engagement AS total FROM leads "
    "ORDER BY fit + engagement DESC, lead_id LIMIT 50"
)
AS_OF_NOW = (
    "SELECT lead_id, fit + engagement * power(0.5, extract(epoch FROM ($1 - as_of)) / $2) "
    "AS total FROM leads ORDER BY total DESC, lead_id LIMIT 50"
)


async def timed(conn: asyncpg.Connection, query: str, args: tuple, repeat: int) -> float:
    samples = []
    for _ in range(repeat):
        started = time.perf_counter()
        await conn.fetch(query, *args)
        samples.append((time.perf_counter() - started) * 1000)
    return statistics.median(samples)


async def main(leads: int, repeat: int) -> None:
    postgres = EmbeddedPostgres(Path(tempfile.mkdtemp()) / "data", cleanup="delete").start()
    conn = await asyncpg.connect(postgres.database_url().replace("+asyncpg", ""))
    try:
        await conn.execute(
            "CREATE TABLE leads (lead_id text PRIMARY KEY, fit float8, engagement float8, "
            "as_of timestamptz)"
        )
        # Fit in steps of 10, engagement -10..110, last events over the past year.
        await conn.execute(
            "INSERT INTO leads SELECT 'l-' || g, (random() * 4)::int * 10, random() * 120 - 10, "
            "now() - random() * interval '365 days' FROM generate_series(1, $1) g",
            leads,
        )
        await conn.execute(
            "CREATE INDEX leads_by_score ON leads ((fit + engagement) DESC, lead_id)"
        )
        await conn.execute("ANALYZE leads")
        stored = await timed(conn, STORED, (), repeat)
        now = await timed(conn, AS_OF_NOW, (datetime.now(UTC), HALF_LIFE_SECONDS), repeat)
        print(f"{leads:,} leads, first page of 50, median of {repeat}:")
        print(f"  by the score at the last event (index):  {stored:8.1f} ms")
        print(f"  by the score as of now (every row):      {now:8.1f} ms")
    finally:
        await conn.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--leads", type=int, default=1_000_000)
    parser.add_argument("--repeat", type=int, default=5)
    arguments = parser.parse_args()
    asyncio.run(main(arguments.leads, arguments.repeat))
