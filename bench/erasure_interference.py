"""How much a queue of erasures slows live scoring: the same backlog drained on its own, then
again while 10,000 erasure requests, queued at once, are carried out.

    .venv/bin/python -m bench.erasure_interference [--erasures 10000] [--events 40000]

Each run has a database of its own holding the same history (2.2 x `--erasures` people);
the erased people are not the ones the backlog's events are about, so both runs score the
same work. Reported: both scoring rates and their ratio, how long queueing took, and how
fast erasures were carried out beside scoring (and after the backlog, alone).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from pathlib import Path

from bench.harness import Infra, InProcessService, produce, wait_committed
from bench.workload import generate
from schemas import api
from services.adapters.postgres import lead_store, person_store
from services.adapters.postgres.db import connection
from services.app import people
from services.settings import Settings

RESULTS = Path(__file__).parent / "results"
QUEUEING_CONCURRENCY = 8


async def waiting(service: InProcessService) -> int:
    async with connection(service.container.db) as pg:
        return await person_store.waiting_count(pg)


async def queue_erasures(service: InProcessService, lead_ids: list[str]) -> float:
    """Seconds to queue an erasure of each lead through the use case the API calls."""
    limit = asyncio.Semaphore(QUEUEING_CONCURRENCY)

    async def one(lead_id: str) -> None:
        async with limit:
            await people.request_erasure(
                service.container, api.ErasureRequest(user_id=lead_id), by="bench"
            )

    started = time.perf_counter()
    await asyncio.gather(*(one(lead_id) for lead_id in lead_ids))
    return time.perf_counter() - started


async def run(infra: Infra, name: str, erasures: int, events: int, erase: bool) -> dict[str, float]:
    settings = infra.settings(Settings(), name)
    settings = await infra.fresh_database(settings, name)
    service = await InProcessService(settings).start()
    try:
        # History: people u-0 and on; the backlog is about u-0 .. u-(n-1) only, and the
        # erasures take n of the people after them (a few have no event: a fifth more).
        people_count = 2 * erasures + erasures // 5
        history = await produce(
            settings, generate(events=4 * people_count, leads=people_count, seed=1, recent=True)
        )
        await wait_committed(settings, history)
        outcome: dict[str, float] = {}
        if erase:
            async with connection(service.container.db) as pg:
                known = set(await lead_store.lead_ids_after(pg, "", 10 * people_count))
            doomed = [f"u-{n}" for n in range(erasures, people_count) if f"u-{n}" in known]
            doomed = doomed[:erasures]
            assert len(doomed) == erasures, f"only {len(doomed)} people to erase"
            outcome["queue_seconds"] = await queue_erasures(service, doomed)
        erasing_from = time.perf_counter()
        feeding = asyncio.create_task(
            produce(settings, generate(events=events, leads=erasures, seed=2, recent=True))
        )
        seconds = await wait_committed(settings, history + events)
        await feeding
        outcome["events_per_s"] = events / seconds
        if erase:
            outcome["erasures_left_at_drain"] = await waiting(service)
            while await waiting(service):
                await asyncio.sleep(0.1)
            took = time.perf_counter() - erasing_from
            outcome["erasure_seconds"] = took
            outcome["erasures_per_s"] = erasures / took
        return outcome
    finally:
        await service.close()


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--erasures", type=int, default=10_000)
    parser.add_argument("--events", type=int, default=40_000)
    args = parser.parse_args()
    infra = Infra()
    try:
        alone = await run(infra, "bench_scoring_alone", args.erasures, args.events, False)
        shared = await run(infra, "bench_with_erasures", args.erasures, args.events, True)
    finally:
        infra.stop()
    result = {
        "erasures": args.erasures,
        "events": args.events,
        "alone_events_per_s": round(alone["events_per_s"]),
        "with_erasures_events_per_s": round(shared["events_per_s"]),
        "scoring_rate_ratio": round(shared["events_per_s"] / alone["events_per_s"], 2),
        "queue_seconds": round(shared["queue_seconds"], 1),
        "erasures_left_when_backlog_drained": int(shared["erasures_left_at_drain"]),
        "all_erased_seconds": round(shared["erasure_seconds"], 1),
        "erasures_per_s": round(shared["erasures_per_s"]),
    }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "erasure_interference.json").write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    asyncio.run(main())
