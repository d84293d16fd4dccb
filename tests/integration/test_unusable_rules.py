"""A rule-set version that cannot run never stops the service: activation refuses it, and if
one is made live anyway (here by hand in the database, past every check) events wait on the
topic, readiness and the metric say why, a restart comes up instead of crash-looping, and
activating another version scores every waiting event once, with nothing dead-lettered."""

from __future__ import annotations

from typing import Any

from bench.workload import generate, lead_key
from services.app.container import Container
from services.runtime.bootstrap import bootstrap
from tests.helpers.database import db_fetch, drained
from tests.helpers.kafka import produce
from tests.helpers.replays import assert_leads_match, replay
from tests.helpers.service import RunningService, client_for
from tests.helpers.waiting import wait_for


def sample(container: Container, name: str, labels: dict[str, str] | None = None) -> float:
    value = container.metrics.registry.get_sample_value(name, labels or {})
    return value or 0.0


async def waited_on_rules(container: Container, times: int) -> bool:
    """The consumer fetched a batch and put it back unscored `times` times."""
    errors = sample(
        container, "leadscore_loop_errors_total", {"loop": "consumer", "error": "VersionUnusable"}
    )
    return errors >= times


async def readiness(container: Container) -> tuple[int, dict[str, Any]]:
    async with client_for(container) as client:
        answer = await client.get("/readyz")
    return answer.status_code, answer.json()


async def dead_lettered(settings: Any) -> int:
    rows = await db_fetch(
        settings, "SELECT count(*) AS n FROM outbox WHERE topic = $1", settings.topic_dlq
    )
    return int(rows[0]["n"])


async def test_a_version_that_cannot_run_holds_events_until_another_is_activated(settings):
    docs = list(generate(events=400, leads=30, seed=11, recent=True, days=5))
    running = await RunningService(bootstrap(settings)).start()
    try:
        # Version 2: the starter set with a follow-up deadline of null, as a document stored
        # by an older release that let NaN through. Written past the validator, by hand.
        await db_fetch(
            settings,
            "INSERT INTO rulesets (version, name, document, published_by) "
            "SELECT 2, name, jsonb_set(document, '{sla,mql}', 'null'), 'test' "
            "FROM rulesets WHERE version = 1",
        )
        async with client_for(running.container) as admin:
            refused = await admin.post("/v1/rulesets/2/activate")
            assert refused.status_code == 422, refused.text
            assert refused.json()["error"] == "ruleset_unusable"
            assert "sla" in str(refused.json()["detail"])
            simulated = await admin.post("/v1/rulesets/2/simulate", json={"events": docs[:3]})
            assert simulated.status_code == 422, simulated.text
        await db_fetch(settings, "UPDATE active_ruleset SET version = 2 WHERE id = 1")

        await produce(settings, docs, key=lead_key)
        await wait_for(lambda: waited_on_rules(running.container, 2), timeout=60)
        status, body = await readiness(running.container)
        assert status == 503
        assert body["checks"]["rules"] is False
        assert "version 2 cannot run" in body["problems"]["rules"]
        assert sample(running.container, "leadscore_active_ruleset_unusable") == 1
        # Nothing scored, nothing stored as done, nothing dead-lettered.
        assert await db_fetch(settings, "SELECT lead_id FROM leads") == []
        assert (
            await db_fetch(settings, "SELECT * FROM consumer_offsets WHERE next_offset > 0") == []
        )
        assert await dead_lettered(settings) == 0
        assert running.container.supervisor.fatal is None
        assert not any(task.done() for task in running.tasks)
    finally:
        await running.close()

    # A restart while the version is still live comes up and says so, rather than exiting.
    running = await RunningService(bootstrap(settings)).start()
    try:
        status, body = await readiness(running.container)
        assert (status, body["checks"]["rules"]) == (503, False)
        await wait_for(lambda: waited_on_rules(running.container, 1), timeout=60)
        assert running.container.supervisor.fatal is None

        async with client_for(running.container) as admin:
            back = await admin.post("/v1/rulesets/1/activate")
            assert back.status_code == 200, back.text
        await wait_for(lambda: drained(settings, len(docs)), timeout=90, what="every event")
        await assert_leads_match(settings, replay(docs))
        assert await dead_lettered(settings) == 0
        status, body = await readiness(running.container)
        assert body["checks"]["rules"] is True, body
        assert sample(running.container, "leadscore_active_ruleset_unusable") == 0
    finally:
        await running.close()
