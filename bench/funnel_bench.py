"""The funnel report on 1,000,000 transitions: how long GET /v1/funnel takes.

.venv/bin/python -m bench.funnel_bench [--leads 400000]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

from tqdm import tqdm

from bench.harness import Infra
from services.adapters.postgres import db
from services.adapters.postgres.db import driver
from services.adapters.postgres.read_store import STAGE_QUERY
from services.reports.funnel import funnel_report
from services.settings import Settings

RESULTS = Path(__file__).parent / "results"
END = datetime(2026, 11, 1, tzinfo=UTC)

# Each lead climbs 1 to 4 steps (lead -> mql -> sal -> sql -> opportunity) over 90 days.
FILL_TRANSITIONS = """
INSERT INTO transitions (transition_id, lead_id, from_stage, to_stage, reason, ruleset_version,
                         score_total, occurred_at, emitted_at)
SELECT 'b' || g || ':' || v.step, 'b' || g, v.from_stage, v.to_stage, 'threshold', 1, 50,
       $3::timestamptz - make_interval(days => g % 90) + make_interval(hours => v.step * (g % 7)),
       $3::timestamptz
FROM generate_series($1::int, $2::int) AS g,
     (VALUES (1, 'lead', 'mql'), (2, 'mql', 'sal'), (3, 'sal', 'sql'),
             (4, 'sql', 'opportunity')) AS v(step, from_stage, to_stage)
WHERE v.step <= 1 + (g::bigint * 7919) % 4
"""
FILL_HANDOFFS = """
INSERT INTO handoffs (transition_id, lead_id, stage, owner, entered_at, respond_by, status,
                      answered_at)
SELECT transition_id, lead_id, 'mql', 'queue:default', occurred_at, occurred_at + interval '1 day',
       CASE WHEN hashtext(lead_id) % 5 = 0 THEN 'breached' ELSE 'answered' END,
       CASE WHEN hashtext(lead_id) % 5 = 0 THEN NULL
            ELSE occurred_at + make_interval(mins => abs(hashtext(lead_id)) % 2000) END
FROM transitions WHERE to_stage = 'mql'
"""
FILL_FEEDBACK = """
INSERT INTO feedback (feedback_id, lead_id, outcome, reason, at, result)
SELECT 'f' || lead_id, lead_id, 'rejected', (ARRAY['no budget', 'timing', 'wrong persona'])[
       1 + abs(hashtext(lead_id)) % 3], occurred_at + interval '3 hours', 'applied'
FROM transitions WHERE to_stage = 'mql' AND abs(hashtext(lead_id)) % 10 = 0
"""


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--leads", type=int, default=400_000)
    args = parser.parse_args()
    infra = Infra()
    try:
        settings = await infra.fresh_database(infra.settings(Settings(), "bench"), "bench_funnel")
        engine = db.create_engine(settings.database_url.get_secret_value())  # type: ignore[union-attr]
        await db.migrate(engine)
        async with engine.connect() as conn:
            pg = await driver(conn)
            chunk = 50_000
            for start in tqdm(range(1, args.leads + 1, chunk), desc="transitions", unit="chunk"):
                await pg.execute(FILL_TRANSITIONS, start, min(start + chunk - 1, args.leads), END)
            await pg.execute(FILL_HANDOFFS)
            await pg.execute(FILL_FEEDBACK)
            await pg.execute("ANALYZE")
            count = await pg.fetchval("SELECT count(*) FROM transitions")
            results = {"transitions": count}
            for label, days in (("last_30_days", 30), ("all_90_days", 91)):
                since, until = END - timedelta(days=days), END + timedelta(days=1)
                await funnel_report(pg, since, until)  # warm the cache
                timings = []
                for _ in range(3):
                    started = time.perf_counter()
                    report = await funnel_report(pg, since, until)
                    timings.append(time.perf_counter() - started)
                results[label] = {
                    "seconds_best_of_3": round(min(timings), 3),
                    "mql_entered": report["stages"]["mql"]["entered"],
                }
            plan = await pg.fetch(
                "EXPLAIN " + STAGE_QUERY.format(table="transitions", who="lead_id"),
                END - timedelta(days=30),
                END,
            )
            results["plan"] = [r[0] for r in plan if "Scan" in r[0]]
        await engine.dispose()
    finally:
        infra.stop()
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "funnel.json").write_text(json.dumps(results, indent=2))
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    asyncio.run(main())
