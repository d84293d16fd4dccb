"""How much an impact report slows live scoring: drain time of the same backlog with and
without an impact job replaying history at the same time.

    .venv/bin/python -m bench.impact_interference [--events 20000] [--history 20000]
"""

from __future__ import annotations

import argparse
import asyncio
import json
from pathlib import Path

from bench.harness import Infra, InProcessService, produce, wait_committed
from bench.workload import generate
from services.pipeline.jobs import Jobs
from services.pipeline.replays import impact_report
from services.settings import Settings

RESULTS = Path(__file__).parent / "results"


async def drain(infra: Infra, name: str, history: int, events: int, with_impact: bool) -> float:
    settings = infra.settings(Settings(), name)
    settings = await infra.fresh_database(settings, name)
    service = await InProcessService(settings).start()
    try:
        # History to replay: recent, so a 30-day impact report covers all of it.
        sent = await produce(
            settings, generate(events=history, leads=history // 10, seed=1, recent=True)
        )
        await wait_committed(settings, sent)
        job = None
        if with_impact:
            jobs: Jobs = service.container.jobs
            job = await jobs.submit(
                "impact",
                {"bench": True},
                by="bench",
                work=lambda ctx: impact_report(
                    ctx,
                    db=service.container.db,
                    rules=service.container.rules,
                    candidate=1,
                    days=30,
                ),
            )
        feeding = asyncio.create_task(
            produce(settings, generate(events=events, leads=events // 10, seed=2, recent=True))
        )
        seconds = await wait_committed(settings, sent + events)
        await feeding
        if job is not None and job not in service.container.jobs.tasks:
            print(
                "note: the impact job finished before the backlog drained; "
                "use a longer --history for a full overlap"
            )
        return seconds
    finally:
        await service.close()


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--events", type=int, default=20_000)
    parser.add_argument("--history", type=int, default=60_000)
    args = parser.parse_args()
    infra = Infra()
    try:
        alone = await drain(infra, "bench_alone", args.history, args.events, False)
        shared = await drain(infra, "bench_impact", args.history, args.events, True)
    finally:
        infra.stop()
    result = {
        "events": args.events,
        "history_events": args.history,
        "alone_events_per_s": round(args.events / alone),
        "with_impact_events_per_s": round(args.events / shared),
        "slowdown_factor": round(shared / alone, 2),
    }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "impact_interference.json").write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    asyncio.run(main())
