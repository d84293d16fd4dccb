"""kill -9 in the middle of a stream: nothing lost, nothing counted twice."""

from __future__ import annotations

import asyncio
import signal
import time

import pytest

from bench.harness import start_service
from bench.workload import generate, lead_key
from schemas.rule_set import RuleSetDocument
from tests.helpers.database import committed, committed_at_least, db_fetch, drained
from tests.helpers.kafka import produce
from tests.helpers.replays import assert_leads_match, assert_transitions_as_replayed, replay
from tests.helpers.waiting import wait_for

# Small batches, so the kill lands between many commits.
SMALL_BATCHES = "300"


async def kill_mid_stream_then_drain(settings, docs, log, *, kill_after: int) -> None:
    """Feed `docs` to a service process, kill -9 it once `kill_after` events are committed,
    start another and wait until it has drained everything."""
    first = start_service(settings, log, LEADSCORE_BATCH_MAX_RECORDS=SMALL_BATCHES)
    try:
        feeding = asyncio.create_task(produce(settings, docs, key=lead_key))
        await wait_for(
            lambda: committed_at_least(settings, kill_after),
            timeout=120,
            what=f"the first {kill_after:,} events scored",
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


@pytest.mark.slow
async def test_kill_9_mid_stream_then_restart_with_a_challenger_running(settings, tmp_path):
    """Nothing lost or counted twice, in the live state or in a challenger's: the
    challenger's state is written in the batch's transaction. (The ten-kill fault test
    covers the same without a challenger.)"""
    from services.adapters.postgres import db, rule_set_store
    from services.pipeline import challenger
    from services.runtime.bootstrap import bootstrap
    from tests.integration.test_challenger import (
        assert_state_equals,
        candidate_document,
        challenger_rows,
        replay_under,
    )

    container = bootstrap(settings)
    await db.migrate(container.db)
    async with container.db.connect() as conn:
        pg = await db.driver(conn)
        await rule_set_store.ensure_starter(pg)
        async with pg.transaction():
            version = await rule_set_store.publish(
                pg, RuleSetDocument.model_validate(candidate_document()), by="test"
            )
            await challenger.start(pg, version, by="test")
    await container.close()

    docs = list(generate(events=20_000, leads=1_000, seed=5))
    await kill_mid_stream_then_drain(settings, docs, tmp_path / "service.log", kill_after=4_000)
    expected = replay(docs)
    await assert_leads_match(settings, expected)
    await assert_transitions_as_replayed(settings, expected)
    theirs = replay_under(candidate_document(), version, docs)
    assert_state_equals(await challenger_rows(settings), theirs)
    stored = await db_fetch(
        settings,
        "SELECT count(*) AS n FROM challenger_transitions WHERE ruleset_version = $1",
        version,
    )
    assert stored[0]["n"] == len(theirs.transitions)


@pytest.mark.slow
async def test_kill_9_mid_stream_with_a_learned_score_active(settings, tmp_path):
    """A learned score in the active version, kill -9 mid-stream: every lead's scores, the
    learned one among them, equal a replay of the events under the same version (the
    model's running part is derived again for leads loaded after the restart)."""
    from scoring_service.engine import Engine
    from scoring_service.rules import compile_ruleset
    from scoring_service.simulation import replay_documents
    from services.adapters.postgres import db, rule_set_store
    from services.runtime.bootstrap import bootstrap
    from tests.unit.test_model_score_live import with_model

    document = RuleSetDocument.model_validate(with_model())
    container = bootstrap(settings)
    await db.migrate(container.db)
    async with container.db.connect() as conn:
        pg = await db.driver(conn)
        await rule_set_store.ensure_starter(pg)
        async with pg.transaction():
            version = await rule_set_store.publish(pg, document, by="test")
            await rule_set_store.activate(pg, version, by="test")
    await container.close()

    docs = list(generate(events=12_000, leads=800, seed=9))
    await kill_mid_stream_then_drain(settings, docs, tmp_path / "service.log", kill_after=3_000)
    engine = Engine(compile_ruleset(document, version))
    expected = replay_documents(engine, docs, now=time.time())
    await assert_leads_match(settings, expected)
    learned = await db_fetch(
        settings, "SELECT count(*) AS n FROM leads WHERE (scoring->'totals')::jsonb ? 'likelihood'"
    )
    assert learned[0]["n"] == len(expected.ws.leads)
