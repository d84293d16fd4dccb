"""Signed webhooks and CRM writers in the running service, against receivers on loopback:
every record arrives, signed, in order per lead, under a stable id through 500s, 429s and
timeouts; a dead endpoint's deliveries are set aside and re-delivered while Kafka output
goes on; HubSpot and Salesforce stand-ins get requests of the documented shapes, and an
older record never overwrites a newer one; URLs that reach inside are refused."""

from __future__ import annotations

import hashlib
import socket
from collections import defaultdict
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from bench.workload import generate, lead_key
from schemas.webhooks import WebhookMessage
from services.runtime.bootstrap import bootstrap
from tests.helpers.database import db_fetch, drained
from tests.helpers.kafka import produce
from tests.helpers.receivers import Receiver, receiving
from tests.helpers.service import RunningService, client_for
from tests.helpers.waiting import wait_for

FAST = {
    "outbound_allow_private": True,
    "outbound_allow_http": True,
    "webhook_backoff_seconds": 0.05,
    "webhook_backoff_cap_seconds": 0.2,
    "webhook_timeout_seconds": 0.5,
    "webhook_poll_seconds": 0.1,
}


def troubled(message_id: str, attempt: int) -> str:
    """A quarter of the messages meet a 500, a 429, then a timeout before they are taken."""
    if int(hashlib.sha256(message_id.encode()).hexdigest(), 16) % 4:
        return "ok"
    return {1: "500", 2: "429", 3: "timeout"}.get(attempt, "ok")


async def queued(settings, topics: list[str]) -> list[tuple[str, str]]:
    """(record id, lead) of every outbox record of these topics, in outbox order."""
    rows = await db_fetch(
        settings,
        "SELECT record_id, convert_from(key, 'UTF8') AS k FROM outbox WHERE topic = ANY($1) "
        "ORDER BY id",
        topics,
    )
    return [(r["record_id"], r["k"]) for r in rows]


async def test_every_record_arrives_signed_in_order_per_lead_through_failures(settings):
    settings = settings.with_changes(**FAST)
    receiver = Receiver(plan=troubled, hang_seconds=2.0)
    async with receiving(receiver):
        running = await RunningService(bootstrap(settings)).start()
        try:
            async with client_for(running.container) as admin:
                made = await admin.post(
                    "/v1/webhooks",
                    json={
                        "name": "crm bridge",
                        "url": receiver.url + "/hook",
                        "records": ["transitions", "notifications"],
                    },
                )
                assert made.status_code == 201, made.text
                endpoint = made.json()
                assert endpoint["secret"].startswith("whsec_")
                receiver.secret = endpoint["secret"]
                # The secret is shown once: never again.
                listed = (await admin.get("/v1/webhooks")).json()["items"]
                assert [e["id"] for e in listed] == [endpoint["id"]]
                assert "secret" not in listed[0]

                docs = list(generate(events=800, leads=40, seed=29, recent=True, days=10))
                await produce(settings, docs, key=lead_key)
                await wait_for(lambda: drained(settings, len(docs)), timeout=60)
                expected = await queued(
                    settings, [settings.topic_transitions, settings.topic_notifications]
                )
                assert len(expected) > 20, "the workload must make records for this to mean much"

                await wait_for(
                    lambda: len(receiver.accepted_ids) >= len(expected),
                    timeout=90,
                    what="every record at the receiver",
                )
                assert receiver.complaints == []
                # Every record once, under its own id, and each lead's in the order queued.
                assert sorted(receiver.accepted_ids) == sorted(rid for rid, _ in expected)
                by_lead: dict[str, list[str]] = defaultdict(list)
                for rid, lead in expected:
                    by_lead[lead].append(rid)
                arrived: dict[str, list[str]] = defaultdict(list)
                for message in receiver.accepted:
                    data = message["data"]
                    arrived[data["lead_id"]].append(
                        data.get("transition_id") or data["notification_id"]
                    )
                assert arrived == by_lead
                # Retries carried the same id and the same bytes.
                retried = [rid for rid, _ in expected if receiver.tries(rid) > 1]
                assert retried, "some records must have met the failures"
                assert all(receiver.tries(rid) == 4 for rid in retried)
                assert all(len(receiver.bodies[rid]) == 1 for rid in retried)
                for message in receiver.accepted:  # the published shape (docs/asyncapi.yaml)
                    WebhookMessage.model_validate(message)
                assert {m["type"] for m in receiver.accepted} == {
                    "lead.transition",
                    "lead.notification",
                }

                # The log tells each attempt's story.
                async def delivered_log() -> list[dict[str, Any]]:
                    answer = await admin.get(
                        f"/v1/webhooks/{endpoint['id']}/deliveries", params={"limit": 500}
                    )
                    items = answer.json()["items"]
                    return items if all(i["state"] == "delivered" for i in items) else []

                log = {i["record_id"]: i for i in await wait_for(delivered_log)}
                one = log[retried[0]]
                assert (one["attempts"], one["last_status"]) == (4, 204)
                assert one["last_latency_ms"] is not None
                metrics = (await admin.get("/metrics")).text
                counted = f'endpoint="{endpoint["id"]}",result="retried"'
                assert f"leadscore_webhook_deliveries_total{{{counted}}}" in metrics
        finally:
            await running.close()


async def test_a_dead_endpoint_sets_deliveries_aside_without_holding_kafka_back(settings):
    settings = settings.with_changes(**FAST)
    dead = True
    receiver = Receiver(plan=lambda _id, _n: "500" if dead else "ok")
    async with receiving(receiver):
        running = await RunningService(bootstrap(settings)).start()
        try:
            async with client_for(running.container) as admin:
                made = await admin.post(
                    "/v1/webhooks",
                    json={
                        "name": "dead",
                        "url": receiver.url + "/hook",
                        "records": ["transitions"],
                        "retry_hours": 0.0005,  # under two seconds of retries
                    },
                )
                endpoint = made.json()
                receiver.secret = endpoint["secret"]
                docs = list(generate(events=300, leads=20, seed=7, recent=True, days=5))
                await produce(settings, docs, key=lead_key)
                await wait_for(lambda: drained(settings, len(docs)), timeout=60)

                async def unsent() -> int:
                    rows = await db_fetch(
                        settings, "SELECT count(*) AS n FROM outbox WHERE sent_at IS NULL"
                    )
                    return int(rows[0]["n"])

                # Kafka output does not wait for the endpoint.
                await wait_for(lambda: unsent_is_zero(unsent), timeout=30, what="the relay")

                async def all_failed() -> dict[str, Any] | None:
                    state = (await admin.get(f"/v1/webhooks/{endpoint['id']}")).json()
                    return state if state["pending"] == 0 and state["failed"] > 0 else None

                state = await wait_for(all_failed, timeout=60, what="deliveries set aside")
                failed = (
                    await admin.get(
                        f"/v1/webhooks/{endpoint['id']}/deliveries", params={"state": "failed"}
                    )
                ).json()["items"]
                assert len(failed) == state["failed"]
                assert all(f["reason"] == "HTTP 500" and f["last_status"] == 500 for f in failed)
                assert receiver.accepted_ids == []

                dead = False
                since = (datetime.now(UTC) - timedelta(hours=1)).isoformat()
                again = await admin.post(
                    f"/v1/webhooks/{endpoint['id']}/redeliver", json={"failed_since": since}
                )
                assert again.json() == {"queued": state["failed"]}
                await wait_for(lambda: len(receiver.accepted_ids) == state["failed"], timeout=30)
                assert sorted(receiver.accepted_ids) == sorted(f["record_id"] for f in failed)
                bad = await admin.post(
                    f"/v1/webhooks/{endpoint['id']}/redeliver", json={"delivery_id": 10**9}
                )
                assert (bad.status_code, bad.json()["error"]) == (404, "delivery_not_found")
                gone = await admin.delete(f"/v1/webhooks/{endpoint['id']}")
                assert gone.json() == {"deleted": endpoint["id"]}
                again = await admin.get(f"/v1/webhooks/{endpoint['id']}")
                assert (again.status_code, again.json()["error"]) == (404, "endpoint_not_found")
        finally:
            await running.close()


async def unsent_is_zero(unsent) -> bool:  # type: ignore[no-untyped-def]
    return await unsent() == 0


async def test_crm_writers_send_the_documented_shapes_and_never_go_back(settings):
    settings = settings.with_changes(**FAST)
    receiver = Receiver(token="pat-na1-0123456789")
    async with receiving(receiver):
        running = await RunningService(bootstrap(settings)).start()
        try:
            async with client_for(running.container) as admin:
                hubspot = (
                    await admin.post(
                        "/v1/webhooks",
                        json={
                            "name": "hubspot",
                            "kind": "hubspot",
                            "url": receiver.url,
                            "token": receiver.token,
                            "records": ["transitions"],
                            "mapping": {
                                "object": "contacts",
                                "id_property": "leadscore_id",
                                "properties": {
                                    "leadscore_score": "score",
                                    "leadscore_stage": "stage",
                                    "leadscore_reason": "reason",
                                    "leadscore_label": "label",
                                },
                            },
                        },
                    )
                ).json()
                assert hubspot["secret"] is None  # a token is the admin's; never returned
                salesforce = await admin.post(
                    "/v1/webhooks",
                    json={
                        "name": "salesforce",
                        "kind": "salesforce",
                        "url": receiver.url,
                        "token": receiver.token,
                        "records": ["transitions"],
                        "mapping": {
                            "object": "Lead",
                            "id_property": "Leadscore_Id__c",
                            "properties": {"Score__c": "score", "Stage__c": "stage"},
                        },
                    },
                )
                assert salesforce.status_code == 201, salesforce.text
                docs = list(generate(events=2_000, leads=300, seed=11, recent=True, days=10))
                await produce(settings, docs, key=lead_key)
                await wait_for(lambda: drained(settings, len(docs)), timeout=60)
                expected = await queued(settings, [settings.topic_transitions])

                def written(vendor: str) -> dict[str, list[dict[str, Any]]]:
                    out: dict[str, list[dict[str, Any]]] = defaultdict(list)
                    for request in receiver.crm_requests:
                        if request["vendor"] != vendor:
                            continue
                        for item in request.get("inputs") or request.get("records"):
                            key = item.get("id") or item.get("Leadscore_Id__c")
                            out[key].append(item)
                    return out

                await wait_for(
                    lambda: (
                        sum(map(len, written("hubspot").values())) == len(expected)
                        and sum(map(len, written("salesforce").values())) == len(expected)
                    ),
                    timeout=60,
                    what="every transition in both CRMs",
                )
                assert receiver.complaints == []
                # Batched: fewer requests than records, none over the vendors' limits.
                assert len(receiver.crm_requests) < 2 * len(expected)
                leads_last = {lead: rid for rid, lead in expected}
                hub = written("hubspot")
                for lead, rid in leads_last.items():
                    # The last write each CRM record got is the lead's newest transition.
                    seq = rid.rsplit(":", 1)[1]
                    assert hub[lead][-1]["idProperty"] == "leadscore_id"
                    rows = await db_fetch(
                        settings,
                        "SELECT stage FROM leads WHERE lead_id = $1",
                        lead,
                    )
                    assert hub[lead][-1]["properties"]["leadscore_stage"] == rows[0]["stage"]
                    assert written("salesforce")[lead][-1]["Stage__c"] == rows[0]["stage"], seq

                # A re-delivery of an older transition is skipped: the CRM keeps the newest.
                lead = next(lead for lead, moves in hub.items() if len(moves) > 1)
                log = (
                    await admin.get(
                        f"/v1/webhooks/{hubspot['id']}/deliveries", params={"subject": lead}
                    )
                ).json()["items"]
                oldest = log[-1]
                answer = await admin.post(
                    f"/v1/webhooks/{hubspot['id']}/redeliver",
                    json={"delivery_id": oldest["id"]},
                )
                assert answer.json() == {"queued": 1}

                async def skipped() -> dict[str, Any] | None:
                    items = (
                        await admin.get(
                            f"/v1/webhooks/{hubspot['id']}/deliveries",
                            params={"subject": lead, "state": "skipped"},
                        )
                    ).json()["items"]
                    return items[0] if items else None

                skip = await wait_for(skipped, what="the stale write skipped")
                assert skip["id"] == oldest["id"]
                assert skip["reason"].startswith("older than move")
                assert len(written("hubspot")[lead]) == len(hub[lead])
        finally:
            await running.close()


@pytest.mark.parametrize(
    "url, why",
    [
        ("https://169.254.169.254/latest/meta-data", "link-local"),
        ("https://10.1.2.3/hook", "private"),
        ("https://127.0.0.1:9/hook", "loopback"),
        ("https://[::1]/hook", "loopback"),
        ("https://[::ffff:192.168.0.1]/hook", "private"),
        ("https://localhost/hook", "loopback"),
        ("http://example.com/hook", "https"),
        ("https://user:pw@example.com/hook", "user name"),
        ("ftp://example.com/hook", "https"),
    ],
)
async def test_urls_reaching_inside_are_refused_when_set(admin_container, url, why):
    async with client_for(admin_container, "admin") as admin:
        answer = await admin.post("/v1/webhooks", json={"name": "x", "url": url})
        assert answer.status_code == 422, answer.text
        assert answer.json()["error"] == "url_refused"
        assert why in answer.json()["detail"]


async def test_a_name_resolving_inside_and_a_redirect_are_refused_at_delivery(settings):
    """Set with a public-looking name, delivered to what DNS says: this machine's own name
    resolves to a loopback or private address, so the delivery is refused after resolution;
    a redirect (to the metadata address) is never followed."""
    allowed = settings.with_changes(**FAST)
    if socket.gethostname() in ("", "localhost"):
        pytest.skip("this machine's name is localhost, which is refused when set")
    receiver = Receiver(plan=lambda _id, _n: "redirect")
    async with receiving(receiver):
        # http allowed (the receiver is plain), private addresses not.
        strict = allowed.with_changes(outbound_allow_private=False)
        running = await RunningService(bootstrap(strict)).start()
        try:
            async with client_for(running.container) as admin:
                port = receiver.url.rsplit(":", 1)[1]
                inside = await admin.post(
                    "/v1/webhooks",
                    json={"name": "inside", "url": f"http://{socket.gethostname()}:{port}/hook"},
                )
                assert inside.status_code == 201, inside.text
                await produce(strict, list(generate(events=200, leads=10, seed=3, recent=True)))

                async def refused() -> list[dict[str, Any]]:
                    items = (
                        await admin.get(f"/v1/webhooks/{inside.json()['id']}/deliveries")
                    ).json()["items"]
                    return [i for i in items if (i["reason"] or "").startswith("refused")]

                [first, *_] = await wait_for(refused, timeout=60, what="a refused delivery")
                assert "resolves to" in first["reason"]
                assert receiver.attempts == []
        finally:
            await running.close()

        # Private addresses allowed now: the same deliveries reach the receiver, which
        # answers with a redirect to the metadata address.
        receiver.secret = inside.json()["secret"]
        running = await RunningService(bootstrap(allowed)).start()
        try:
            async with client_for(running.container) as admin:

                async def redirected() -> list[dict[str, Any]]:
                    items = (
                        await admin.get(f"/v1/webhooks/{inside.json()['id']}/deliveries")
                    ).json()["items"]
                    return [i for i in items if i["last_status"] == 302]

                [one, *_] = await wait_for(redirected, timeout=60, what="a redirect answered")
                assert "not followed" in one["reason"]
                assert one["state"] == "pending"
                assert receiver.complaints == []
                assert {answer for _, answer in receiver.attempts} == {"redirect"}
        finally:
            await running.close()


async def test_the_console_makes_lists_pauses_and_shows_a_webhooks_log(admin_container):
    from tests.integration.test_console import console_client, csrf_of, sign_in

    async with console_client(admin_container) as browser:
        await sign_in(browser, "admin")
        page = await browser.get("/console/webhooks")
        assert page.status_code == 200, page.text[:300]
        csrf = csrf_of(page.text)
        made = await browser.post(
            "/console/webhooks",
            data={
                "csrf": csrf,
                "name": "<script>alert(1)</script>",
                "url": "https://hooks.example.com/in",
                "record_transitions": "1",
            },
        )
        assert made.status_code == 200, made.text[:300]
        assert "whsec_" in made.text  # the secret, this once
        assert "<script>alert(1)</script>" not in made.text
        assert "&lt;script&gt;" in made.text
        listed = await browser.get("/console/webhooks")
        assert "whsec_" not in listed.text
        [endpoint] = await webhooks_of(admin_container)
        assert endpoint["records"] == ["transitions"]
        paused = await browser.post(
            f"/console/webhooks/{endpoint['id']}/pause", data={"csrf": csrf, "paused": "true"}
        )
        assert paused.status_code == 303
        detail = await browser.get(f"/console/webhooks/{endpoint['id']}")
        assert detail.status_code == 200 and "Resume" in detail.text
        refused = await browser.post(
            "/console/webhooks",
            data={
                "csrf": csrf,
                "name": "inside",
                "url": "https://10.0.0.1/x",
                "record_transitions": "1",
            },
        )
        assert refused.status_code == 422 and "private" in refused.text
        nothing = await browser.post(
            "/console/webhooks", data={"csrf": csrf, "name": "x", "url": "https://a.example"}
        )
        assert nothing.status_code == 422 and "records" in nothing.text


async def webhooks_of(container) -> list[dict[str, Any]]:  # type: ignore[no-untyped-def]
    async with client_for(container, "admin") as admin:
        return (await admin.get("/v1/webhooks")).json()["items"]
