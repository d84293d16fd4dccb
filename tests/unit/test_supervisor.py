"""The supervisor restarts a failing loop, then gives up: readiness first, then the stop."""

from __future__ import annotations

import asyncio

from services.metrics import Metrics
from services.pipeline.supervisor import Supervisor


def quick(metrics: Metrics, **kw: object) -> Supervisor:
    return Supervisor(metrics, backoff=(0.0,), grace=0.05, **kw)  # type: ignore[arg-type]


async def test_a_loop_that_fails_once_is_restarted_and_finishes_normally():
    metrics = Metrics()
    supervisor = quick(metrics)
    stop = asyncio.Event()
    runs = []

    async def body() -> None:
        runs.append(1)
        if len(runs) == 1:
            raise RuntimeError("first run fails")

    await asyncio.wait_for(supervisor.supervise("relay", body, stop), 5)
    assert len(runs) == 2
    assert metrics.loop_restarts.labels("relay")._value.get() == 1
    assert supervisor.fatal is None and supervisor.problems == {}
    assert not stop.is_set()


async def test_a_loop_that_keeps_failing_is_given_up_with_its_reason_and_stops_the_process():
    metrics = Metrics()
    supervisor = quick(metrics, max_restarts=3)
    stop = asyncio.Event()
    seen_problem_before_stop = []

    async def body() -> None:
        raise ValueError("always")

    async def watch() -> None:
        while not stop.is_set():
            if "consumer" in supervisor.problems and supervisor.fatal:
                seen_problem_before_stop.append(supervisor.problems["consumer"])
            await asyncio.sleep(0)

    watcher = asyncio.create_task(watch())
    await asyncio.wait_for(supervisor.supervise("consumer", body, stop), 5)
    await watcher
    assert stop.is_set()
    assert supervisor.fatal == "consumer failed 4 times: ValueError: always"
    assert seen_problem_before_stop and seen_problem_before_stop[0].startswith("gave up")
    assert metrics.loop_restarts.labels("consumer")._value.get() == 3


async def test_stopping_ends_supervision_without_a_restart():
    supervisor = quick(Metrics())
    stop = asyncio.Event()

    async def body() -> None:
        stop.set()
        raise RuntimeError("during shutdown")

    await asyncio.wait_for(supervisor.supervise("sla", body, stop), 5)
    assert supervisor.fatal is None
