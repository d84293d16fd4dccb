"""The fixed cost of a batch: wall time of the event consumer's `process` (parse, the lead
transaction with its round trips, the commit) for batches of 1 to 500 events, inside the
service, against the embedded PostgreSQL. No broker fetch and no publish: what is timed is
what a batch costs between having its records and having them durable.

The lanes keep their database connection from batch to batch (HeldConnection); `--compare`
also times batches that take one from the pool each time, as before, alternating the two
batch by batch so that both meet the same machine:

    .venv/bin/python -m bench.batch_cost --compare

Results go to bench/results/batch_cost.json, and the run is kept as
bench/profiles/batch-cost-<time>.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time
from datetime import UTC, datetime
from typing import Any

import orjson
from aiokafka import TopicPartition
from aiokafka.structs import ConsumerRecord

from bench.harness import Infra
from bench.run import RESULTS
from bench.workload import generate
from services.adapters.postgres import db, rule_set_store
from services.adapters.postgres.db import HeldConnection
from services.runtime.bootstrap import bootstrap
from services.settings import Settings

SIZES = (1, 5, 20, 50, 100, 200, 500)


def records(topic: str, docs: list[dict[str, Any]], first: int) -> list[ConsumerRecord]:
    return [
        ConsumerRecord(topic, 0, first + n, 0, 0, b"k", orjson.dumps(d), None, 0, 0, [])
        for n, d in enumerate(docs)
    ]


async def run(args: argparse.Namespace) -> dict[str, Any]:
    infra = Infra()
    try:
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S")
        settings = infra.settings(Settings(), f"batch-{stamp}")
        settings = await infra.fresh_database(settings, "batch_cost")
        container = bootstrap(settings)
        await db.migrate(container.db)
        async with container.db.connect() as conn:
            await rule_set_store.ensure_starter(await db.driver(conn))
        scorer = container.scorer
        topic = settings.topic_events
        docs = iter(generate(events=10_000_000, leads=args.leads, seed=7, recent=True, days=30))
        offset = 0
        held = scorer.connections
        pooled: list[HeldConnection | None] = [None]

        async def one(size: int, connections: list[Any]) -> float:
            nonlocal offset
            batch = records(topic, [next(docs) for _ in range(size)], offset)
            offset += size
            scorer.connections = connections
            started = time.perf_counter()
            await scorer.process({TopicPartition(topic, 0): batch})
            return (time.perf_counter() - started) * 1000

        for _ in range(50):  # warm: types asked once, leads known, caches filled
            await one(20, held)
        result: dict[str, Any] = {"when": stamp, "leads": args.leads, "sizes": {}}
        for size in SIZES:
            kept: list[float] = []
            pool: list[float] = []
            for _ in range(args.batches):
                kept.append(await one(size, held))
                if args.compare:
                    pool.append(await one(size, pooled))
            entry = {
                "held_ms_median": round(statistics.median(kept), 2),
                "held_ms_p90": round(statistics.quantiles(kept, n=10)[-1], 2),
                "per_event_us": round(statistics.median(kept) * 1000 / size, 1),
            }
            if args.compare:
                entry["pooled_ms_median"] = round(statistics.median(pool), 2)
                entry["pooled_ms_p90"] = round(statistics.quantiles(pool, n=10)[-1], 2)
            result["sizes"][str(size)] = entry
            print(size, entry, flush=True)
        scorer.connections = held
        await container.close()
        return result
    finally:
        infra.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batches", type=int, default=60, help="batches per size (and variant)")
    parser.add_argument("--leads", type=int, default=2_000)
    parser.add_argument("--compare", action="store_true", help="also time pooled connections")
    args = parser.parse_args()
    result = asyncio.run(run(args))
    text = json.dumps(result, indent=2) + "\n"
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "batch_cost.json").write_text(text)
    (RESULTS.parent / "profiles" / f"batch-cost-{result['when']}.json").write_text(text)


if __name__ == "__main__":
    main()
