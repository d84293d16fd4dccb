"""The journey report on a million events of history: how long GET /v1/journey takes.

The events (the benchmark workload: 90 days, 50,000 people, the starter set's journey) go
through the pure engine, and what it decided (leads, accounts, transitions, journey moves)
is written with the service's own store functions; then the report is timed, best of 3.

.venv/bin/python -m bench.journey_bench [--events 1000000] [--leads 50000]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import orjson
from tqdm import tqdm

from bench.engine_bench import parse_all
from bench.harness import Infra
from bench.workload import generate
from scoring_service.engine import Engine
from scoring_service.pipeline import Replay
from scoring_service.rule_set_files import starter_ruleset
from services.adapters.postgres import db, lead_store, record_store
from services.adapters.postgres.db import driver
from services.reports.journey_report import NEXT_STEP_QUERY, report
from services.settings import Settings

RESULTS = Path(__file__).parent / "results"
DAYS = 90
CHUNK = 20_000


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--leads", type=int, default=50_000)
    args = parser.parse_args()
    end = datetime.now(UTC)
    start = end - timedelta(days=DAYS)
    docs = generate(
        events=args.events, leads=args.leads, anonymous_share=0.3, days=DAYS, start=start
    )
    raws = [orjson.dumps(d) if not isinstance(d, bytes) else d for d in docs]
    events = parse_all(raws, time.time())
    del raws
    engine = Engine(starter_ruleset())
    replay = Replay(engine)
    for offset in tqdm(range(0, len(events), CHUNK), desc="scoring", unit="chunk"):
        replay.feed(events[offset : offset + CHUNK], now=time.time())
    infra = Infra()
    try:
        settings = await infra.fresh_database(infra.settings(Settings(), "bench"), "bench_journey")
        pool = db.create_engine(settings.database_url.get_secret_value())  # type: ignore[union-attr]
        await db.migrate(pool)
        async with pool.connect() as conn:
            pg = await driver(conn)
            leads = list(replay.ws.leads.values())
            for offset in tqdm(range(0, len(leads), CHUNK), desc="leads", unit="chunk"):
                await lead_store.save_leads(pg, leads[offset : offset + CHUNK])
            await lead_store.save_accounts(pg, list(replay.ws.accounts.values()))
            for offset in range(0, len(replay.transitions), CHUNK):
                await record_store.save_transitions(pg, replay.transitions[offset : offset + CHUNK])
            moves = replay.journey_moves
            for offset in tqdm(range(0, len(moves), CHUNK), desc="journey moves", unit="chunk"):
                await record_store.save_journey_moves(pg, moves[offset : offset + CHUNK])
            await pg.execute("ANALYZE")
            results: dict[str, object] = {
                "events": len(events),
                "leads": len(leads),
                "accounts": len(replay.ws.accounts),
                "transitions": len(replay.transitions),
                "journey_moves": len(moves),
            }
            for label, days in (("last_30_days", 30), ("all_90_days", DAYS + 1)):
                since, until = end - timedelta(days=days), end + timedelta(days=1)
                await report(pg, since, until, engine.journey)  # warm the cache
                timings = []
                for _ in range(3):
                    started = time.perf_counter()
                    figures = await report(pg, since, until, engine.journey)
                    timings.append(time.perf_counter() - started)
                results[label] = {
                    "seconds_best_of_3": round(min(timings), 3),
                    "moves_in_window": sum(m["count"] for m in figures["moves"]),
                    "leads_placed": sum(p["leads_now"] for p in figures["phases"]),
                }
            plan = await pg.fetch(
                "EXPLAIN ANALYZE " + NEXT_STEP_QUERY, end - timedelta(days=30), end, 10
            )
            results["next_step_plan"] = [
                r[0] for r in plan if "Scan" in r[0] or "Execution" in r[0]
            ]
        await pool.dispose()
    finally:
        infra.stop()
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "journey.json").write_text(json.dumps(results, indent=2))
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    asyncio.run(main())
