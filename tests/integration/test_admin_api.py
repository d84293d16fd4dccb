"""The rules-administration API through the real app on the real database."""

from __future__ import annotations

import time

import pytest
import yaml

from scoring_service.rule_set_files import starter_document
from tests.helpers.database import db_fetch
from tests.helpers.service import client_for
from tests.helpers.waiting import wait_for


def starter_with(**changes) -> dict:
    doc = starter_document().model_dump(mode="json", by_alias=True, exclude_none=True)
    doc.update(changes)
    return doc


def with_rule_points(rule_id: str, points: float) -> dict:
    doc = starter_with()
    for rule in doc["rules"]:
        if rule["id"] == rule_id:
            rule["points"] = points
    return doc


async def test_roles_and_tokens(admin_container):
    async with client_for(admin_container) as anonymous:
        response = await anonymous.get("/v1/rulesets")
        assert response.status_code == 401
        assert response.headers["www-authenticate"] == "Bearer"
        assert response.json()["error"] == "unauthorized"
        wrong = await anonymous.get("/v1/rulesets", headers={"Authorization": "Bearer nope"})
        assert wrong.status_code == 401
        assert (await anonymous.get("/healthz")).status_code == 200
    async with client_for(admin_container, "viewer") as viewer:
        assert (await viewer.get("/v1/rulesets")).status_code == 200
        refused = await viewer.post("/v1/rulesets", json=starter_with())
        assert refused.status_code == 403
        assert refused.json()["error"] == "forbidden"
        assert (await viewer.post("/v1/rulesets/1/activate")).status_code == 403
        assert (await viewer.get("/v1/audit")).status_code == 403
    async with client_for(admin_container, "ingest") as ingest:
        assert (await ingest.get("/v1/leads")).status_code == 403
    async with client_for(admin_container, "admin") as admin:
        assert (await admin.get("/v1/leads")).status_code == 200  # admins read too


async def test_without_tokens_only_loopback_is_trusted(settings):
    from services.runtime.bootstrap import bootstrap

    container = bootstrap(settings)
    try:
        async with client_for(container, host="10.1.2.3") as remote:
            response = await remote.get("/v1/rulesets")
            assert response.status_code == 401
            assert "loopback" in response.json()["detail"]
    finally:
        await container.close()


async def test_publish_list_get_diff_activate_and_audit(admin_container):
    async with client_for(admin_container, "admin") as admin:
        created = await admin.post(
            "/v1/rulesets",
            json=with_rule_points("pricing-page", 20),
            params={"comment": "pricing matters more"},
        )
        assert created.status_code == 201
        body = created.json()
        assert (body["version"], body["published_by"], body["active"]) == (2, "admin-user", False)
        assert body["comment"] == "pricing matters more"

        yaml_doc = yaml.safe_dump(starter_with(thresholds={"mql": 40, "sal": 90}))
        created = await admin.post(
            "/v1/rulesets", content=yaml_doc, headers={"Content-Type": "application/yaml"}
        )
        assert created.status_code == 201 and created.json()["version"] == 3

        listing = (await admin.get("/v1/rulesets")).json()
        assert [(v["version"], v["active"]) for v in listing] == [(3, False), (2, False), (1, True)]
        assert (await admin.get("/v1/rulesets/2")).json()["document"]["rules"][0]["points"] == 20
        assert (await admin.get("/v1/rulesets/active")).json()["version"] == 1
        missing = await admin.get("/v1/rulesets/99")
        assert (missing.status_code, missing.json()["error"]) == (404, "ruleset_not_found")

        diff = (await admin.get("/v1/rulesets/1/diff/2")).json()
        assert diff["rules"] == {
            "added": [],
            "removed": [],
            "changed": [
                {"id": "pricing-page", "changes": [{"field": "points", "from": 15.0, "to": 20.0}]}
            ],
        }
        assert diff["settings"] == []
        diff = (await admin.get("/v1/rulesets/2/diff/3")).json()
        assert {"field": "thresholds.mql", "from": 50.0, "to": 40.0} in diff["settings"]
        assert (await admin.get("/v1/rulesets/1/diff/99")).status_code == 404

        activated = await admin.post("/v1/rulesets/2/activate")
        assert activated.status_code == 200
        assert (activated.json()["version"], activated.json()["rescore_job"]) == (2, None)
        assert (await admin.get("/v1/rulesets/active")).json()["version"] == 2
        assert (await admin.post("/v1/rulesets/99/activate")).status_code == 404
        rollback = await admin.post("/v1/rulesets/1/activate")
        assert rollback.json()["version"] == 1

        audit = (await admin.get("/v1/audit")).json()["items"]
        assert [(a["action"], a["target"], a["actor"]) for a in audit] == [
            ("ruleset.activate", "1", "admin-user"),
            ("ruleset.activate", "2", "admin-user"),
            ("ruleset.publish", "3", "admin-user"),
            ("ruleset.publish", "2", "admin-user"),
        ]
        page = (await admin.get("/v1/audit", params={"limit": 3})).json()
        rest = (await admin.get("/v1/audit", params={"cursor": page["next_cursor"]})).json()
        assert len(page["items"]) == 3 and [a["target"] for a in rest["items"]] == ["2"]


BAD_RULE = {"id": "bad", "category": "engagement", "when": {"type": "page", "regex": "x"}}


@pytest.mark.parametrize(
    "body,content_type,where",
    [
        ({**starter_with(), "rules": [BAD_RULE]}, "json", "rules[0].when"),
        ({**starter_with(), "thresholds": {"mql": "high", "sal": 90}}, "json", "thresholds.mql"),
        ({**starter_with(), "rules": [{**BAD_RULE, "when": {}}]}, "json", "rules[0].when"),
        (
            {
                **starter_with(),
                "rules": [
                    {
                        "id": "x",
                        "category": "engagement",
                        "when": {"type": "page"},
                        "promote_to": "customer",
                    }
                ],
            },
            "json",
            "rules[0].promote_to",
        ),
        (
            {
                **starter_with(),
                "rules": [
                    {
                        "id": "x",
                        "category": "engagement",
                        "when": {"type": "page"},
                        "limit": {"count": 0, "window_days": 7},
                    }
                ],
            },
            "json",
            "rules[0].limit.count",
        ),
        # Each duplicate id at its own place (with where its id was first used).
        (
            {**starter_with(), "rules": starter_with()["rules"] * 2},
            "json",
            f"rules[{len(starter_with()['rules'])}].id",
        ),
        ("name: !!python/object/apply:os.system ['true']\n", "yaml", "document"),
        ("a: &x [1]\nb: *x\n", "yaml", "document"),
        ("x: " + "[" * 40 + "]" * 40 + "\n", "yaml", "document"),
        (
            {
                **starter_with(),
                "rules": [{"id": "x", "category": "engagement", "when": {"path": "*a" * 20}}],
            },
            "json",
            "rules[0].when.path",
        ),
    ],
)
async def test_invalid_rule_sets_are_refused_with_every_problem_located(
    admin_container, body, content_type, where
):
    async with client_for(admin_container, "admin") as admin:
        if content_type == "json":
            response = await admin.post("/v1/rulesets", json=body)
        else:
            response = await admin.post(
                "/v1/rulesets", content=body, headers={"Content-Type": "application/yaml"}
            )
        assert response.status_code == 422, response.text
        assert response.json()["error"] == "invalid_ruleset"
        assert any(p["loc"].startswith(where) for p in response.json()["detail"]), response.json()
        assert len((await admin.get("/v1/rulesets")).json()) == 1  # nothing was stored


async def test_oversized_body_is_refused(admin_container):
    async with client_for(admin_container, "admin") as admin:
        response = await admin.post("/v1/rulesets", content=b"x" * (1024 * 1024 + 1))
        assert (response.status_code, response.json()["error"]) == (413, "too_large")


async def test_simulate_writes_nothing(admin_container, settings):
    events = [
        {
            "type": "identify",
            "messageId": "s1",
            "userId": "sim",
            "timestamp": "2026-11-01T10:00:00Z",
            "traits": {"email": "s@x.example", "title": "Owner"},
        },
        {
            "type": "page",
            "messageId": "s2",
            "userId": "sim",
            "timestamp": "2026-11-01T10:00:00Z",
            "properties": {"path": "/pricing"},
        },
        {
            "type": "page",
            "messageId": "s3",
            "userId": "sim",
            "timestamp": "2026-11-01T10:00:00Z",
            "properties": {"path": "/pricing"},
        },
        {
            "type": "page",
            "messageId": "s3",
            "userId": "sim",
            "timestamp": "2026-11-01T10:00:00Z",
            "properties": {"path": "/pricing"},
        },
        {
            "type": "page",
            "messageId": "s5",
            "userId": "sim",
            "timestamp": "2026-11-01T10:00:00Z",
            "properties": {"path": "/pricing/teams"},
        },
        {"type": "screen", "messageId": "s6", "userId": "sim"},
    ]
    async with client_for(admin_container, "viewer") as viewer:
        response = await viewer.post("/v1/rulesets/1/simulate", json={"events": events})
        assert response.status_code == 200
        result = response.json()
        [lead] = result["leads"]
        assert (lead["lead_id"], lead["stage"]) == ("sim", "mql")
        assert [step["score"]["total"] for step in lead["trajectory"]] == [15, 30, 45, 60]
        assert lead["trajectory"][1]["hits"] == [
            {"rule_id": "pricing-page", "points": 15.0, "counted": True}
        ]
        [transition] = result["transitions"]
        assert (transition["to_stage"], transition["reason"]) == ("mql", "threshold")
        assert result["duplicates"] == [3]
        assert result["rejected"] == [
            {"index": 5, "error": "unknown_type", "detail": result["rejected"][0]["detail"]}
        ]
        assert (
            await viewer.post("/v1/rulesets/9/simulate", json={"events": []})
        ).status_code == 404
        bad = await viewer.post("/v1/rulesets/1/simulate", json={"events": "nope"})
        assert (bad.status_code, bad.json()["error"]) == (422, "invalid_request")
    assert await db_fetch(settings, "SELECT * FROM leads") == []
    assert await db_fetch(settings, "SELECT * FROM outbox") == []


async def test_unknown_job_is_404(admin_container):
    async with client_for(admin_container, "viewer") as viewer:
        for job_id in ("00000000-0000-0000-0000-000000000000", "not-a-uuid"):
            response = await viewer.get(f"/v1/jobs/{job_id}")
            assert (response.status_code, response.json()["error"]) == (404, "job_not_found")


async def test_openapi_describes_every_body_and_error(admin_container):
    async with client_for(admin_container) as client:
        spec = (await client.get("/openapi.json")).json()
    for path, methods in spec["paths"].items():
        for method, operation in methods.items():
            responses = operation["responses"]
            success = [code for code in responses if code.startswith("2")]
            assert success, (path, method)
            if path.startswith("/v1"):
                assert {"401", "403"} <= responses.keys(), (path, method)
                for code in success:
                    assert responses[code].get("content"), (path, method, code)
    publish = spec["paths"]["/v1/rulesets"]["post"]
    assert {"application/json", "application/yaml"} <= publish["requestBody"]["content"].keys()
    assert "422" in publish["responses"] and "413" in publish["responses"]


async def wait_job(client, job_id: str, timeout: float = 60) -> dict:
    deadline = time.monotonic() + timeout

    async def finished():
        job = (await client.get(f"/v1/jobs/{job_id}")).json()
        return job if job["status"] != "running" else None

    job = await wait_for(finished, timeout=max(deadline - time.monotonic(), 1), what="job")
    return job


async def test_http_ingest_publishes_segment_calls(service, settings):
    from tests.helpers.database import drained

    async with client_for(service.container) as client:
        batch = await client.post(
            "/v1/batch",
            json={
                "batch": [
                    {
                        "type": "page",
                        "messageId": "h1",
                        "anonymousId": "web-1",
                        "timestamp": "2026-11-20T09:00:00Z",
                        "properties": {"path": "/pricing"},
                    },
                    {
                        "type": "identify",
                        "messageId": "h2",
                        "userId": "web-user",
                        "anonymousId": "web-1",
                        "timestamp": "2026-11-20T09:01:00Z",
                        "traits": {
                            "email": "w@x.example",
                            "title": "Dispatcher",
                            "company": {"name": "X Freight"},
                        },
                    },
                ]
            },
        )
        assert (batch.status_code, batch.json()) == (
            200,
            {"accepted": 2, "success": True, "refused": []},
        )
        single = await client.post(
            "/v1/track",
            json={
                "messageId": "h3",
                "userId": "web-user",
                "timestamp": "2026-11-20T09:02:00Z",
                "event": "Demo Requested",
            },
        )
        assert single.status_code == 200
        bad = await client.post("/v1/batch", json={"batch": [{"type": "screen"}]})
        assert bad.status_code == 422
        assert bad.json()["detail"][0]["error"] == "unknown_type"
        await wait_for(lambda: drained(settings, 3))
        lead = (await client.get("/v1/leads/web-1")).json()
        assert (lead["lead_id"], lead["stage"]) == ("web-user", "sal")


async def test_a_batch_keeps_its_good_events_and_names_the_refused_ones(service, settings):
    from tests.helpers.database import drained
    from tests.helpers.kafka import read_all

    good = {
        "type": "track",
        "userId": "kept",
        "event": "Demo Requested",
        "timestamp": "2026-11-20T09:05:00Z",
    }  # no messageId
    batch = [
        good,
        {"type": "page", "messageId": "b2", "properties": {"path": "/pricing"}},
        {**good, "messageId": "b3", "timestamp": "yesterday"},
    ]
    async with client_for(service.container) as client:
        answer = await client.post("/v1/batch", json={"batch": batch})
        assert answer.status_code == 200, answer.text
        body = answer.json()
        assert body["accepted"] == 1 and body["success"] is True
        assert [(r["index"], r["error"]) for r in body["refused"]] == [
            (1, "missing_identity"),
            (2, "invalid_timestamp"),
        ]
        await wait_for(lambda: drained(settings, 3))
        # Scored without a messageId: the demo request's 30 points (held from sales, as a
        # lead without the traits sales needs is).
        lead = (await client.get("/v1/leads/kept")).json()
        assert lead["score"]["engagement"] > 0 and lead["held"], lead
    dlq = await read_all(settings, settings.topic_dlq, expect=2)
    assert sorted(dict(r.headers)["error"].decode() for r in dlq) == [
        "invalid_timestamp",
        "missing_identity",
    ]
    generated = service.container.metrics.message_ids_generated._value.get()
    assert generated == 1


async def test_a_batch_with_an_event_larger_than_a_record_answers_and_keeps_the_rest(
    service, settings
):
    big = {"type": "track", "userId": "big", "event": "x", "properties": {"pad": "x" * 950_000}}
    good = {"type": "track", "messageId": "small-1", "userId": "small", "event": "x"}
    async with client_for(service.container) as client:
        answer = await client.post("/v1/batch", json={"batch": [big, good]})
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["accepted"] == 1 and [r["error"] for r in body["refused"]] == ["too_large"]


async def test_ingest_needs_the_ingest_role(admin_container):
    async with client_for(admin_container, "viewer") as viewer:
        response = await viewer.post("/v1/track", json={"event": "x"})
        assert response.status_code == 403


async def test_leads_by_score_page_stably_highest_first(admin_container, settings):
    """A work queue: 57 leads with many equal totals, read 10 at a time by score."""
    totals = {f"q-{i:02d}": float((i * 7) % 5) * 10 + (i % 3) for i in range(57)}
    await db_fetch(
        settings,
        "INSERT INTO leads (lead_id, stage, fit, engagement, traits) "
        "SELECT l, 'mql', t / 2, t / 2, '{}' FROM unnest($1::text[], $2::float8[]) AS u(l, t)",
        list(totals),
        list(totals.values()),
    )
    expected = sorted(totals, key=lambda lead: (-totals[lead], lead))
    seen: list[str] = []
    cursor = None
    async with client_for(admin_container, "viewer") as viewer:
        while True:
            params = {"sort": "-score", "limit": 10, **({"cursor": cursor} if cursor else {})}
            page = (await viewer.get("/v1/leads", params=params)).json()
            if not seen:
                # The top lead drops to 0 after the first page: it comes round again at its
                # new place; every lead that did not change is read once, in order.
                await db_fetch(
                    settings,
                    "UPDATE leads SET fit = 0, engagement = 0 WHERE lead_id = $1",
                    expected[0],
                )
            seen += [item["lead_id"] for item in page["items"]]
            cursor = page["next_cursor"]
            if cursor is None:
                break
        changed = expected[0]
        assert [lead for lead in seen if lead != changed] == expected[1:]
        # Read again at its new place among the totals of 0, after the first page.
        assert seen.count(changed) == 2 and seen.index(changed, 1) >= 10
        top = (await viewer.get("/v1/leads", params={"sort": "-score", "limit": 3})).json()
        scores = [item["score"]["total"] for item in top["items"]]
        assert scores == sorted(scores, reverse=True)
        for bad in ("%%%", "WzEsMl0=", "bm90IGpzb24="):  # "%%%", [1,2], "not json"
            answer = await viewer.get("/v1/leads", params={"sort": "-score", "cursor": bad})
            assert (answer.status_code, answer.json()["error"]) == (400, "invalid_cursor")
        assert (await viewer.get("/v1/leads", params={"sort": "score"})).status_code == 422
