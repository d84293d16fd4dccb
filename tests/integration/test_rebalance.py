"""Consumers joining and leaving a group mid-stream: no event lost or counted twice."""

from __future__ import annotations

import asyncio

from bench.workload import generate, lead_key
from services.runtime.bootstrap import bootstrap
from tests.helpers.database import committed_at_least, drained
from tests.helpers.kafka import produce
from tests.helpers.replays import assert_leads_match, replay
from tests.helpers.service import RunningService
from tests.helpers.waiting import wait_for


async def trickle(settings, docs, keep_slow) -> None:
    """Stream in small steps while `keep_slow()` holds (so a consumer that joins late still
    finds work), then the rest at once."""
    sent = 0
    while sent < len(docs):
        step = 100 if keep_slow() else len(docs)
        await produce(settings, docs[sent : sent + step], key=lead_key)
        sent += step
        if keep_slow():
            await asyncio.sleep(0.05)  # pacing the load, not waiting for a condition


async def test_two_consumers_rebalance_mid_stream(settings):
    docs = list(generate(events=16_000, leads=400, seed=3))
    small = settings.model_copy(update={"batch_max_records": 200})
    first = await RunningService(bootstrap(small)).start()
    second = None
    try:
        feeding = asyncio.create_task(
            trickle(small, docs, lambda: second is None or second.container.scorer.batches == 0)
        )
        await wait_for(lambda: committed_at_least(small, 1_500), timeout=60, what="first events")
        second = await RunningService(bootstrap(small)).start()  # the group rebalances
        await wait_for(
            lambda: second.container.scorer.batches > 0,
            timeout=60,
            what="the second consumer to score",
        )
        await feeding
        await first.close()  # and rebalances again: the second takes every partition
        first = None
        await wait_for(lambda: drained(small, len(docs)), timeout=120, what="drain")
    finally:
        for running in (first, second):
            if running is not None:
                await running.close()
    await assert_leads_match(small, replay(docs))
