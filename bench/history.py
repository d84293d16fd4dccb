"""`make bench-history`: does the cost per event grow with the history already stored?

The same backlog (100,000 events by default, as `make bench` makes it) is drained by a fresh
service on databases already holding 0, 2 million and 20 million scored-history rows, then on
an empty one again (the machine's speed drifts; the two empty runs bracket the others). The
rows are written by the database itself (`INSERT ... SELECT` over `generate_series`, far faster
than scoring them): a million earlier leads' page views spread over the last twelve months,
each with its dedup key, hits and event document as the service writes them, followed by
`VACUUM ANALYZE` as a long-running database would have had. The raw ceiling is measured in the
same run, and every rate is also given as a share of it.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from datetime import UTC, datetime
from typing import Any

import asyncpg

from bench.harness import Infra
from bench.run import RESULTS, backlog, drain_variant, produce_all, raw_ceiling
from services.adapters.kafka import ensure_topics
from services.runtime.embedded import free_port
from services.settings import Settings

# History of this many earlier leads (about 20 rows each at 20 million rows).
EARLIER_LEADS = 1_000_000
CHUNK = 1_000_000
# One page view as the service stores it: the event document and the one rule it hit.
LOAD = """
INSERT INTO lead_events
    (lead_id, message_id, type, occurred_at, event, hits, points, ruleset_version, raw_id)
SELECT 'h-' || (g % $3), 'h-m-' || g, 'page',
       now() - interval '365 days' + (g::float8 / $4) * interval '300 days',
       jsonb_build_object('type', 'page', 'messageId', 'h-m-' || g, 'userId', 'h-' || (g % $3),
                          'properties', jsonb_build_object('path', '/blog/post-' || (g % 500))),
       '[["blog-post", 2.0, true]]', 2, 1, 'h-' || (g % $3)
FROM generate_series($1::bigint, $2::bigint) AS g
"""


def loader(rows: int):  # type: ignore[no-untyped-def]
    async def load(url: str) -> None:
        if not rows:
            return
        pg = await asyncpg.connect(url)
        try:
            started = time.perf_counter()
            for first in range(1, rows + 1, CHUNK):
                last = min(rows, first + CHUNK - 1)
                await pg.execute(LOAD, first, last, EARLIER_LEADS, rows)
                print(f"  loaded {last:,} of {rows:,} history rows", flush=True)
            await pg.execute("VACUUM ANALYZE lead_events")
            await pg.execute("CHECKPOINT")
            print(f"  {rows:,} rows in {time.perf_counter() - started:.0f} s", flush=True)
        finally:
            await pg.close()

    return load


async def run(args: argparse.Namespace) -> int:
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S")
    infra = Infra()
    base = infra.settings(Settings(), f"history-{stamp}")
    settings = (await infra.fresh_database(base, "history_run")).with_changes(http_port=free_port())
    await ensure_topics(settings)
    result: dict[str, Any] = {"when": stamp, "events": args.events, "leads": args.leads}
    try:
        docs = backlog(args)
        await produce_all(settings, docs, "produce backlog")
        result["ceiling_events_per_s"] = round(await raw_ceiling(settings, len(docs)))
        runs: list[dict[str, Any]] = []
        for n, rows in enumerate([*args.rows, 0]):
            rate = await drain_variant(
                infra, settings, len(docs), f"history-{n}-{rows}", load=loader(rows)
            )
            runs.append({"history_rows": rows, "end_to_end_events_per_s": round(rate)})
            print(f"{rows:>12,} history rows: {rate:,.0f} ev/s", flush=True)
        empty = [r["end_to_end_events_per_s"] for r in runs if r["history_rows"] == 0]
        reference = sum(empty) / len(empty)
        for r in runs:
            r["share_of_ceiling"] = round(
                r["end_to_end_events_per_s"] / result["ceiling_events_per_s"], 4
            )
            r["relative_to_empty"] = round(r["end_to_end_events_per_s"] / reference, 3)
        result["runs"] = runs
    finally:
        infra.stop()
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / f"history-{stamp}.json"
    out.write_text(json.dumps(result, indent=2))
    print(f"ceiling {result['ceiling_events_per_s']:,} ev/s")
    for r in result["runs"]:
        print(
            f"{r['history_rows']:>12,} rows  {r['end_to_end_events_per_s']:>7,} ev/s  "
            f"{r['share_of_ceiling']:.1%} of ceiling  {r['relative_to_empty']:.2f}x empty"
        )
    print(f"(also in {out})")
    return 0


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--leads", type=int, default=20_000)
    parser.add_argument("--accounts", type=int, default=2_000)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument(
        "--rows",
        type=lambda text: [int(x) for x in text.split(",")],
        default=[0, 2_000_000, 20_000_000],
        help="history sizes, comma-separated (an empty run is added at the end)",
    )
    raise SystemExit(asyncio.run(run(parser.parse_args())))


if __name__ == "__main__":
    main()
