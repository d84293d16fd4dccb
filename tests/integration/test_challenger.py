"""A challenger version on live traffic: its own state, nothing published, and activation
that makes its state the live one."""

from __future__ import annotations

import time
from typing import Any

import orjson

from bench.workload import generate, lead_key
from schemas.rule_set import RuleSetDocument
from scoring_service.engine import Engine
from scoring_service.pipeline import Replay
from scoring_service.rules import compile_ruleset
from scoring_service.simulation import replay_documents
from services.pipeline.challenger import SCORING_STAGES
from services.reports.review import PAST_LEAD
from services.runtime.bootstrap import bootstrap
from tests.helpers.database import db_fetch, drained
from tests.helpers.kafka import produce, read_all
from tests.helpers.service import RunningService, client_for
from tests.helpers.waiting import wait_for
from tests.integration.test_admin_api import wait_job, with_rule_points


def candidate_document() -> dict[str, Any]:
    """A candidate that values pricing visits far more: many leads reach mql sooner."""
    return with_rule_points("pricing-page", 30)


def replay_under(document: dict[str, Any], version: int, docs: list[Any]) -> Replay:
    engine = Engine(compile_ruleset(RuleSetDocument.model_validate(document), version))
    return replay_documents(engine, docs, now=time.time())


def starter_replay(docs: list[Any]) -> Replay:
    from scoring_service.rule_set_files import starter_ruleset

    return replay_documents(Engine(starter_ruleset()), docs, now=time.time())


async def challenger_rows(settings) -> dict[str, Any]:
    rows = await db_fetch(
        settings, "SELECT lead_id, stage, fit, engagement, seq FROM challenger_leads"
    )
    return {r["lead_id"]: r for r in rows}


def assert_state_equals(rows: dict[str, Any], replay: Replay, *, stages: bool = True) -> None:
    assert set(rows) == set(replay.ws.leads)
    for lead_id, state in replay.ws.leads.items():
        row = rows[lead_id]
        if stages:
            assert (row["stage"], row["seq"]) == (state.stage, state.seq), lead_id
        assert abs(row["fit"] - state.fit) < 1e-9, lead_id
        assert abs(row["engagement"] - state.engagement) < 1e-6, lead_id


def handed_off(replay: Replay) -> int:
    """Leads the replay moved past `lead` (the review's cohort)."""
    return len(
        {
            t["lead_id"]
            for t in replay.transitions
            if t["from_stage"] in ("lead", "recycled") and t["to_stage"] in PAST_LEAD
        }
    )


async def outbox_records(settings) -> list[dict[str, Any]]:
    """Records queued for the output topics (the DLQ aside: the workload has a few events
    intake refuses, which the replay skips)."""
    rows = await db_fetch(
        settings, "SELECT value FROM outbox WHERE topic <> $1 ORDER BY id", settings.topic_dlq
    )
    return [orjson.loads(r["value"]) for r in rows]


def lead_records(replay: Replay) -> int:
    return len(replay.transitions) + len(replay.notifications)


async def test_challenger_scores_alongside_publishes_nothing_and_activates_warm(settings):
    docs = list(generate(events=3_000, leads=150, seed=15, recent=True, days=20))
    before, during = docs[:1_200], docs[1_200:]
    running = await RunningService(bootstrap(settings)).start()
    try:
        await produce(settings, before, key=lead_key)
        await wait_for(lambda: drained(settings, len(before)), timeout=60)
        async with client_for(running.container) as admin:
            version = (await admin.post("/v1/rulesets", json=candidate_document())).json()[
                "version"
            ]
            started = await admin.post(f"/v1/rulesets/{version}/challenge")
            assert started.status_code == 201, started.text
            assert started.json()["version"] == version
            # One at a time, and never the active version.
            again = await admin.post(f"/v1/rulesets/{version}/challenge")
            assert (again.status_code, again.json()["error"]) == (409, "challenger_running")
            job = await wait_job(admin, started.json()["warm_up_job"])
            assert job["status"] == "succeeded", job
            status = (await admin.get("/v1/challenger")).json()
            assert status["warmed_at"] is not None
            assert status["leads_warm"] == status["leads_live"] > 0
            # The candidate keeps the starter's journey: warmed, it places leads the same.
            phases = status["journey_phases"]
            assert phases and all(p["live"] == p["challenger"] > 0 for p in phases.values())

            await produce(settings, during, key=lead_key)
            await wait_for(lambda: drained(settings, len(docs)), timeout=90)

            live, challenger = (
                starter_replay(docs),
                replay_under(candidate_document(), version, docs),
            )
            differing = {
                lead_id: (state.stage, challenger.ws.leads[lead_id].stage)
                for lead_id, state in live.ws.leads.items()
                if state.stage in SCORING_STAGES
                and state.stage != challenger.ws.leads[lead_id].stage
            }
            assert differing, "the candidate must change some stages for the test to mean much"

            # The challenger published nothing: the outbox holds exactly the live version's
            # lead records. Account records are the live version's too; how many there are
            # may differ from the replay's, since an account's members arrive on different
            # partitions and a roll-up near a threshold can cross it in one order and not in
            # another (the crash tests compare accounts' order-free parts for that reason).
            queued = await outbox_records(settings)
            assert {r["ruleset_version"] for r in queued} == {1}
            assert sum(1 for r in queued if r.get("lead_id")) == lead_records(live)
            transitions = [
                orjson.loads(r.value)
                for r in await read_all(
                    settings, settings.topic_transitions, expect=len(live.transitions)
                )
            ]
            assert {t["ruleset_version"] for t in transitions} == {1}
            assert len({t["transition_id"] for t in transitions}) == len(live.transitions)
            handoffs = await db_fetch(settings, "SELECT count(*) AS n FROM handoffs")
            assert handoffs[0]["n"] == sum(
                1 for t in live.transitions if live.engine.rules.sla.get(t["to_stage"])
            )
            # Its own state is a pure replay of the challenger version, warmed leads included.
            assert_state_equals(await challenger_rows(settings), challenger)
            lead_id, (_, theirs) = next(iter(differing.items()))
            seen = (await admin.get(f"/v1/leads/{lead_id}", params={"version": version})).json()
            assert seen["stage"] == theirs
            assert seen["ruleset_version"] == version
            assert (await admin.get(f"/v1/leads/{lead_id}")).json()["stage"] != theirs
            unknown = await admin.get(f"/v1/leads/{lead_id}", params={"version": 999})
            assert (unknown.status_code, unknown.json()["error"]) == (404, "version_not_scoring")

            # The review of the challenger: its own handoffs over the same leads, next to
            # the active version's.
            review = (await admin.get("/v1/review", params={"version": version})).json()
            assert review["scored_by"] == "challenger"
            assert review["handed_off"] == handed_off(challenger)
            assert review["compared_with"]["version"] == 1
            assert review["compared_with"]["scored_by"] == "live"
            assert review["compared_with"]["handed_off"] == handed_off(live)
            assert review["handed_off"] != review["compared_with"]["handed_off"]

            # Every stored event has the challenger's hits too, warmed ones included.
            unhit = await db_fetch(
                settings, "SELECT count(*) AS n FROM lead_events WHERE challenger_hits IS NULL"
            )
            assert unhit[0]["n"] == 0

            activated = await admin.post(f"/v1/rulesets/{version}/activate")
            assert activated.status_code == 200, activated.text
            assert activated.json()["challenger"] == {
                "leads": len(live.ws.leads),
                "moved": len(differing),
            }
            assert (await admin.get("/v1/challenger")).json() is None

        # The live state is now the challenger's replay: its scores everywhere, its stages
        # where scoring decides them.
        rows = {
            r["lead_id"]: r
            for r in await db_fetch(settings, "SELECT lead_id, stage, fit, engagement FROM leads")
        }
        assert_state_equals(rows, challenger, stages=False)
        for lead_id, state in live.ws.leads.items():
            expected = differing.get(lead_id, (state.stage, state.stage))[1]
            assert rows[lead_id]["stage"] == expected, lead_id
        # The transitions emitted are exactly the stage differences, reason `rescore`.
        records = await read_all(
            settings, settings.topic_transitions, expect=len(live.transitions) + len(differing)
        )
        rescored = {
            t["lead_id"]: (t["from_stage"], t["to_stage"])
            for t in map(orjson.loads, (r.value for r in records))
            if t["reason"] == "rescore"
        }
        assert rescored == differing
        assert not await db_fetch(settings, "SELECT 1 FROM challenger_leads LIMIT 1")
        # The history now explains the new scores: its hits are the challenger's.
        versions = await db_fetch(settings, "SELECT DISTINCT ruleset_version FROM lead_events")
        assert [r["ruleset_version"] for r in versions] == [version]
    finally:
        await running.close()


async def test_challenger_requests_are_checked(admin_container):
    async with client_for(admin_container, "admin") as admin:
        missing = await admin.post("/v1/rulesets/77/challenge")
        assert (missing.status_code, missing.json()["error"]) == (404, "ruleset_not_found")
        active = await admin.post("/v1/rulesets/1/challenge")
        assert (active.status_code, active.json()["error"]) == (409, "already_active")
        not_running = await admin.delete("/v1/rulesets/1/challenge")
        assert (not_running.status_code, not_running.json()["error"]) == (409, "not_challenger")
        version = (await admin.post("/v1/rulesets", json=candidate_document())).json()["version"]
        assert (await admin.post(f"/v1/rulesets/{version}/challenge")).status_code == 201
        stopped = await admin.delete(f"/v1/rulesets/{version}/challenge")
        assert stopped.status_code == 200
        assert stopped.json() == {"version": version, "stopped_by": "admin-user"}
        assert (await admin.get("/v1/challenger")).json() is None
    async with client_for(admin_container, "viewer") as viewer:
        refused = await viewer.post(f"/v1/rulesets/{version}/challenge")
        assert refused.status_code == 403
