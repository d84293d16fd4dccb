"""`make bench-restart`: how soon the service is back at work after `kill -9`, on the
embedded Apache Kafka (or the configured broker), with and without static group membership.

For each variant, five times: a service process is started and scores a few events; it is
killed with SIGKILL; a new process is started at once. Measured from the new start: until
`/readyz` answers 200 (partitions assigned, database and broker reachable), and until an
event produced right after the start is scored. Writes bench/results/restart-<time>.json.
"""

from __future__ import annotations

import asyncio
import json
import signal
import statistics
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx

from bench.harness import Infra, committed, produce, start_service
from bench.workload import generate
from services.adapters.kafka import ensure_topics
from services.runtime.embedded import free_port
from services.settings import Settings

RESULTS = Path(__file__).resolve().parent / "results"
ROUNDS = 5


async def until(check: Any, timeout: float = 120) -> float:
    """Seconds until the async `check` is true."""
    started = time.perf_counter()
    while not await check():
        if time.perf_counter() - started > timeout:
            raise TimeoutError("not back within the timeout")
        await asyncio.sleep(0.02)
    return time.perf_counter() - started


async def restarts(infra: Infra, name: str, extra_env: dict[str, str]) -> dict[str, Any]:
    settings = await infra.fresh_database(infra.settings(Settings(), name), name.replace("-", "_"))
    settings = settings.with_changes(http_port=free_port())
    await ensure_topics(settings)
    log = RESULTS / f"{name}.log"

    async def ready() -> bool:
        try:
            async with httpx.AsyncClient(timeout=2) as client:
                url = f"http://127.0.0.1:{settings.http_port}/readyz"
                return (await client.get(url)).status_code == 200
        except httpx.HTTPError:
            return False

    sent = 0
    service = start_service(settings, log, **extra_env)
    await until(ready)
    to_ready, to_work = [], []
    try:
        for round_ in range(ROUNDS):
            sent += await produce(settings, generate(events=200, leads=50, seed=round_))
            await until(lambda n=sent: _at_least(settings, n))
            service.send_signal(signal.SIGKILL)
            service.wait(10)
            started = time.perf_counter()
            service = start_service(settings, log, **extra_env)
            await until(ready)
            to_ready.append(time.perf_counter() - started)
            sent += await produce(settings, generate(events=1, leads=1, seed=100 + round_))
            await until(lambda n=sent: _at_least(settings, n))
            to_work.append(time.perf_counter() - started)
    finally:
        service.kill()
        service.wait(10)
    return {
        "seconds_to_ready": [round(s, 2) for s in to_ready],
        "seconds_to_first_event_scored": [round(s, 2) for s in to_work],
        "median_to_ready": round(statistics.median(to_ready), 2),
        "median_to_first_event_scored": round(statistics.median(to_work), 2),
    }


async def _at_least(settings: Settings, n: int) -> bool:
    return await committed(settings) >= n


async def main() -> None:
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S")
    infra = Infra()
    RESULTS.mkdir(exist_ok=True)
    try:
        result = {
            "when": stamp,
            "rounds": ROUNDS,
            "static_membership": await restarts(
                infra, f"restart-static-{stamp}", {"LEADSCORE_KAFKA_GROUP_INSTANCE_ID": "bench-1"}
            ),
            "dynamic_membership": await restarts(infra, f"restart-dynamic-{stamp}", {}),
        }
    finally:
        infra.stop()
    path = RESULTS / f"restart-{stamp}.json"
    path.write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    asyncio.run(main())
