"""kill -9 in the middle of a stream: nothing lost, nothing counted twice."""

from __future__ import annotations

import asyncio
import signal
from collections import defaultdict

import orjson
import pytest

from bench.harness import start_service
from bench.workload import generate, lead_key
from tests.conftest import (
    assert_accounts_match,
    assert_leads_match,
    committed,
    committed_at_least,
    drained,
    produce,
    read_all,
    replay,
    wait_for,
)

# Small batches, so the kill lands between many commits.
SMALL_BATCHES = "300"


@pytest.mark.slow
async def test_kill_9_mid_stream_then_restart(settings, tmp_path):
    docs = list(generate(events=20_000, leads=1_000, seed=5))
    log = tmp_path / "service.log"
    first = start_service(settings, log, LEADSCORE_BATCH_MAX_RECORDS=SMALL_BATCHES)
    try:
        feeding = asyncio.create_task(produce(settings, docs, key=lead_key))
        await wait_for(
            lambda: committed_at_least(settings, 4_000),
            timeout=120,
            what="the first 4,000 events scored",
        )
        first.send_signal(signal.SIGKILL)
        first.wait(10)
        await feeding
        done_at_kill = await committed(settings)
        assert done_at_kill < len(docs), "the kill should land mid-stream"
    finally:
        if first.poll() is None:
            first.kill()

    second = start_service(settings, log, LEADSCORE_BATCH_MAX_RECORDS=SMALL_BATCHES)
    try:
        await wait_for(
            lambda: drained(settings, len(docs)), timeout=180, what="drain after restart"
        )
    finally:
        second.send_signal(signal.SIGTERM)
        assert second.wait(30) == 0, log.read_text()[-3000:]

    expected = replay(docs)
    await assert_leads_match(settings, expected)
    topic = await read_all(settings, settings.topic_transitions, expect=len(expected.transitions))
    copies: dict[str, list[dict]] = defaultdict(list)
    for record in topic:
        value = orjson.loads(record.value)
        copies[value["transition_id"]].append(value)
        assert record.key == value["lead_id"].encode()
    assert set(copies) == {t["transition_id"] for t in expected.transitions}
    for versions in copies.values():  # a duplicate is the same record under the same id
        assert all(v == versions[0] for v in versions)
    # The account's score in a lead's record depends on how far the account's other members,
    # on other partitions, had got at that moment: not fixed by the input, so not compared.
    # The account roll-up itself must equal the replay's.
    unfixed = ("emitted_at", "account_score")
    for t in expected.transitions:
        published = copies[t["transition_id"]][0]
        assert {k: v for k, v in published.items() if k not in unfixed} == {
            k: v for k, v in t.items() if k not in unfixed
        }
    await assert_accounts_match(settings, expected)
