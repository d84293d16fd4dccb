"""Accounts through the real broker and database: a buying committee assembling (with a
kill -9 in the middle), and two instances scoring members of the same accounts at once."""

from __future__ import annotations

import signal
from collections import defaultdict
from typing import Any

import httpx
import orjson
import pytest

from bench.harness import start_service
from bench.workload import generate
from scoring_service.rule_set_files import starter_document
from services.runtime.bootstrap import bootstrap
from services.runtime.embedded import free_port
from tests.helpers.committee import ACCOUNT, committee_journey
from tests.helpers.database import db_fetch, drained
from tests.helpers.kafka import produce, read_all
from tests.helpers.replays import assert_accounts_match, assert_leads_match, replay
from tests.helpers.service import RunningService, client_for
from tests.helpers.waiting import wait_for
from tests.integration.test_admin_api import wait_job
from tests.integration.test_rule_changes import split_between


def starter_with_required(roles: list[str]) -> dict[str, Any]:
    doc = starter_document().model_dump(mode="json", by_alias=True, exclude_none=True)
    doc["accounts"]["coverage"]["required"] = roles
    return doc


def _without_emitted_at(record: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in record.items() if k != "emitted_at"}


def _once_each(records: list[Any], id_key: str) -> dict[str, dict[str, Any]]:
    """Records by id: at-least-once delivery may repeat one, never with other content."""
    copies: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for record in records:
        value = orjson.loads(record.value)
        copies[value[id_key]].append(_without_emitted_at(value))
    for versions in copies.values():
        assert all(v == versions[0] for v in versions)
    return {key: versions[0] for key, versions in copies.items()}


def _runs_by_person(steps: list[dict[str, Any]]) -> list[list[dict[str, Any]]]:
    """Consecutive steps with the same Kafka key, together."""
    runs: list[list[dict[str, Any]]] = []
    for step in steps:
        key = step.get("userId") or step.get("anonymousId")
        if runs and (runs[-1][0].get("userId") or runs[-1][0].get("anonymousId")) == key:
            runs[-1].append(step)
        else:
            runs.append([step])
    return runs


async def _ready(settings) -> bool:
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{settings.http_port}") as http:
            return (await http.get("/readyz")).status_code == 200
    except httpx.HTTPError:
        return False


@pytest.mark.slow
async def test_a_buying_committee_qualifies_its_account_once_despite_a_kill(settings, tmp_path):
    """Four people of one account over two weeks of event time, one step at a time (so the
    order across partitions is the journey's), the service killed with SIGKILL mid-way."""
    settings = settings.with_changes(http_port=free_port())
    steps = committee_journey()
    log = tmp_path / "service.log"
    service = start_service(settings, log)
    try:
        await wait_for(lambda: _ready(settings), timeout=60, what="the service ready")
        # A person's consecutive steps go together (one key, one partition: their order
        # holds); the next person waits until they are scored.
        done = 0
        groups = _runs_by_person(steps)
        for group in groups[:3]:
            await produce(settings, group)
            done += len(group)
            await wait_for(lambda n=done: drained(settings, n), timeout=60, what=f"{done} steps")
        # Tina's steps are sent and the process killed at once: some may be committed.
        await produce(settings, groups[3])
        done += len(groups[3])
        service.send_signal(signal.SIGKILL)
        service.wait(10)
        service = start_service(settings, log)
        await wait_for(lambda: _ready(settings), timeout=60, what="the service ready again")
        await wait_for(lambda: drained(settings, done), timeout=90, what="recovery")
        for group in groups[4:]:
            await produce(settings, group)
            done += len(group)
            await wait_for(lambda n=done: drained(settings, n), timeout=60, what=f"{done} steps")
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{settings.http_port}") as http:
            account = (await http.get(f"/v1/accounts/{ACCOUNT}")).json()
            listed = (await http.get("/v1/accounts", params={"stage": "mqa"})).json()
            missing = (await http.get("/v1/accounts", params={"role_missing": "validator"})).json()
            history = (await http.get(f"/v1/accounts/{ACCOUNT}/history")).json()
            eve = (await http.get("/v1/leads/u-eve")).json()
            metrics = (await http.get("/metrics")).text
            # The admin tools see accounts too.
            simulated = (await http.post("/v1/rulesets/1/simulate", json={"events": steps})).json()
            funnel = (
                await http.get(
                    "/v1/funnel",
                    params={"since": "2026-11-01T00:00:00Z", "until": "2026-12-01T00:00:00Z"},
                )
            ).json()
            stricter = starter_with_required(["economic_buyer", "champion", "validator"])
            version = (await http.post("/v1/rulesets", json=stricter)).json()["version"]
            started = await http.post(f"/v1/rulesets/{version}/impact", json={"days": 3650})
            impact = await wait_job(http, started.json()["job_id"])
    finally:
        service.send_signal(signal.SIGTERM)
        assert service.wait(30) == 0, log.read_text()[-3000:]

    expected = replay(steps)
    await assert_leads_match(settings, expected)
    transitions = _once_each(
        await read_all(settings, settings.topic_account_transitions, expect=2), "transition_id"
    )
    assert [(t["from_stage"], t["to_stage"]) for t in transitions.values()] == [
        ("target", "engaged"),
        ("engaged", "mqa"),
    ]
    assert list(transitions.values()) == [
        _without_emitted_at(t) for t in expected.account_transitions
    ]
    notices = _once_each(
        await read_all(settings, settings.topic_notifications, expect=1), "notification_id"
    )
    qualified = [n for n in notices.values() if n["type"] == "account_qualified"]
    assert qualified == expected.account_notifications
    assert qualified[0]["owner"] == "ae.jordan@seller.example"
    # Lead records: every one as the replay has it, role and account score included.
    lead_records = _once_each(
        await read_all(settings, settings.topic_transitions, expect=len(expected.transitions)),
        "transition_id",
    )
    assert lead_records == {
        t["transition_id"]: _without_emitted_at(t)
        for t in expected.transitions  # type: ignore[misc]
    }

    # What the account endpoint shows.
    mqa = expected.account_transitions[1]
    assert account["stage"] == "mqa"
    assert account["roles_covered"] == ["economic_buyer", "technical_decision_maker", "champion"]
    assert set(account["roles_required"]) == {"economic_buyer", "champion"}
    assert "economic_buyer" not in account["roles_missing"]
    roles = {m["lead_id"]: m["role"] for m in account["members"]}
    assert roles == {
        "u-eve": "economic_buyer",
        "u-chris": "champion",
        "u-tina": "technical_decision_maker",
        "u-sam": None,
    }
    sam = next(m for m in account["members"] if m["lead_id"] == "u-sam")
    assert sam["engagement"] > 0 and sam["counted"] == 0
    assert round(sum(m["counted"] for m in account["members"]), 2) == account["score"]["engagement"]
    assert account["score"]["total"] > mqa["score"]["total"]  # the committee kept going
    assert account["top_signals"][0]["category"] == "engagement"
    assert [a["account_id"] for a in listed["items"]] == [ACCOUNT]
    assert [a["account_id"] for a in missing["items"]] == [ACCOUNT]
    assert [t["to_stage"] for t in history["transitions"]] == ["engaged", "mqa"]
    assert eve["committee_role"] == "economic_buyer"
    assert eve["account_score"] == account["score"]["total"]
    assert 'leadscore_account_transitions_total{to_stage="mqa"}' in metrics
    [journey_account] = simulated["accounts"]
    assert (journey_account["account_id"], journey_account["stage"]) == (ACCOUNT, "mqa")
    assert [t["to_stage"] for t in simulated["account_transitions"]] == ["engaged", "mqa"]
    assert funnel["accounts"]["stages"]["engaged"]["entered"] == 1
    assert funnel["accounts"]["stages"]["mqa"]["entered"] == 1
    assert funnel["accounts"]["conversion"][0] == {
        "from": "engaged",
        "to": "mqa",
        "entered": 1,
        "converted": 1,
        "rate": 1.0,
    }
    # Requiring a validator too, nobody of Haulers' committee covers it: no mqa.
    assert impact["status"] == "succeeded", impact
    assert impact["result"]["accounts"]["stages"]["mqa"] == {"active": 1, "candidate": 0}
    assert impact["result"]["accounts"]["moved_examples"][0]["account_id"] == ACCOUNT


@pytest.mark.slow
async def test_two_instances_scoring_members_of_one_account_lose_no_contribution(settings):
    # Six companies for 300 people: fifty each, spread over every partition.
    # Everyone identified: an anonymous visitor's traits and their later identified ones
    # travel on different partitions, and which lands last is not fixed by the input.
    docs = list(generate(events=4_000, leads=300, seed=21, accounts=6))
    settings = settings.with_changes(batch_max_records=200)
    first = await RunningService(bootstrap(settings)).start()
    second = await RunningService(bootstrap(settings)).start()
    try:
        await wait_for(
            lambda: split_between(first, second, settings.topic_partitions),
            what="the partitions split between both instances",
        )
        await produce(settings, docs)
        await wait_for(lambda: drained(settings, len(docs)), timeout=180, what="the stream")
        assert first.container.scorer.batches and second.container.scorer.batches
    finally:
        await second.close()
        await first.close()

    expected = replay(docs)
    await assert_leads_match(settings, expected)
    await assert_accounts_match(settings, expected)


async def test_account_feedback_follows_the_table_once_per_feedback_id(admin_container, settings):
    await db_fetch(
        settings,
        "INSERT INTO accounts (account_id, traits, stage) VALUES ('acct-x', '{}', 'mqa')",
    )
    async with client_for(admin_container, "admin") as admin:
        opened = await admin.post(
            "/v1/accounts/acct-x/feedback", json={"feedback_id": "crm-1", "outcome": "opportunity"}
        )
        again = await admin.post(
            "/v1/accounts/acct-x/feedback", json={"feedback_id": "crm-1", "outcome": "opportunity"}
        )
        refused = await admin.post(
            "/v1/accounts/acct-x/feedback", json={"feedback_id": "crm-2", "outcome": "reopened"}
        )
        won = await admin.post(
            "/v1/accounts/acct-x/feedback",
            json={"feedback_id": "crm-3", "outcome": "won", "reason": "signed 3 years"},
        )
        unknown = await admin.post(
            "/v1/accounts/nobody/feedback", json={"feedback_id": "crm-4", "outcome": "won"}
        )
        bad = await admin.post(
            "/v1/accounts/acct-x/feedback", json={"feedback_id": "crm-5", "outcome": "maybe"}
        )
    async with client_for(admin_container, "viewer") as viewer:
        forbidden = await viewer.post(
            "/v1/accounts/acct-x/feedback", json={"feedback_id": "crm-6", "outcome": "lost"}
        )
        history = (await viewer.get("/v1/accounts/acct-x/history")).json()
    assert opened.status_code == 200 and opened.json()["duplicate"] is False
    transition = opened.json()["transition"]
    assert (transition["from_stage"], transition["to_stage"], transition["reason"]) == (
        "mqa",
        "opportunity",
        "sales_feedback",
    )
    assert again.json()["duplicate"] is True and again.json()["transition"] == transition
    assert refused.status_code == 409 and refused.json()["error"] == "illegal_transition"
    assert won.json()["transition"]["to_stage"] == "customer"
    assert won.json()["transition"]["reason_detail"] == "signed 3 years"
    assert unknown.status_code == 404 and unknown.json()["error"] == "account_not_found"
    assert bad.status_code in (400, 422)
    assert forbidden.status_code == 403
    assert [t["transition_id"] for t in history["transitions"]] == ["acct-x:1", "acct-x:2"]


async def test_accounts_page_by_score_and_id_with_stable_cursors(admin_container, settings):
    await db_fetch(
        settings,
        "INSERT INTO accounts (account_id, traits, stage, fit, engagement, coverage, score, "
        "roles_covered) SELECT 'acct-' || n, jsonb_build_object('name', 'Co ' || n), "
        "CASE WHEN n % 2 = 0 THEN 'mqa' ELSE 'engaged' END, 10, n * 10, 0, 10 + n * 10, "
        "CASE WHEN n % 3 = 0 THEN ARRAY['economic_buyer'] ELSE ARRAY[]::text[] END "
        "FROM generate_series(1, 7) AS n",
    )
    async with client_for(admin_container, "viewer") as viewer:
        seen, cursor = [], None
        while True:
            params = {"sort": "-score", "limit": 3, **({"cursor": cursor} if cursor else {})}
            page = (await viewer.get("/v1/accounts", params=params)).json()
            seen += [(a["account_id"], a["score"]["total"]) for a in page["items"]]
            cursor = page["next_cursor"]
            if cursor is None:
                break
        by_id = (await viewer.get("/v1/accounts", params={"limit": 100})).json()
        mqa = (await viewer.get("/v1/accounts", params={"stage": "mqa", "min_score": 45})).json()
        no_buyer = (
            await viewer.get("/v1/accounts", params={"role_missing": "economic_buyer"})
        ).json()
        bad_cursor = await viewer.get("/v1/accounts", params={"sort": "-score", "cursor": "x"})
        bad_stage = await viewer.get("/v1/accounts", params={"stage": "lead"})
        missing = await viewer.get("/v1/accounts/nobody")
    assert [a for a, _ in seen] == [f"acct-{n}" for n in range(7, 0, -1)]
    assert [t for _, t in seen] == [10 + n * 10 for n in range(7, 0, -1)]
    assert [a["account_id"] for a in by_id["items"]] == [f"acct-{n}" for n in range(1, 8)]
    assert [a["account_id"] for a in mqa["items"]] == ["acct-4", "acct-6"]
    assert [a["account_id"] for a in no_buyer["items"]] == [f"acct-{n}" for n in (1, 2, 4, 5, 7)]
    assert bad_cursor.status_code == 400 and bad_cursor.json()["error"] == "invalid_cursor"
    assert bad_stage.status_code in (400, 422)
    assert missing.status_code == 404 and missing.json()["error"] == "account_not_found"


async def test_hostile_account_requests_get_a_4xx_in_words(admin_container, settings):
    await db_fetch(
        settings, "INSERT INTO accounts (account_id, traits, stage) VALUES ('acct-h', '{}', 'mqa')"
    )
    async with client_for(admin_container, "admin") as admin:
        answers = [
            await admin.get("/v1/accounts", params={"min_score": "lots"}),
            await admin.get("/v1/accounts", params={"role_missing": "x" * 41}),
            await admin.get("/v1/accounts", params={"limit": 10**9}),
            await admin.get("/v1/accounts", params={"sort": "score"}),
            await admin.get("/v1/accounts", params={"cursor": "%ED%A0%80"}),
            await admin.get("/v1/accounts/acct-h%00"),
            await admin.get("/v1/accounts/" + "a" * 5000),
            await admin.post(
                "/v1/accounts/acct-h/feedback", json={"feedback_id": "f\u0000", "outcome": "won"}
            ),
            await admin.post(
                "/v1/accounts/acct-h/feedback",
                json={"feedback_id": "f1", "outcome": "won", "reason": "r" * 501},
            ),
            await admin.post(
                "/v1/accounts/acct-h/feedback", json={"feedback_id": 7, "outcome": ["won"]}
            ),
            await admin.post(
                "/v1/accounts/acct-h/feedback",
                json={"feedback_id": "f2", "outcome": "won", "extra": {"a": [[[[1]]]]}},
            ),
        ]
    for answer in answers:
        assert 400 <= answer.status_code < 500, (answer.request.url, answer.text)
        assert set(answer.json()) <= {"error", "detail"} and answer.json()["error"]
    # Nothing was applied: the account is still where it was.
    [row] = await db_fetch(settings, "SELECT stage, seq FROM accounts WHERE account_id = 'acct-h'")
    assert (row["stage"], row["seq"]) == ("mqa", 0)
