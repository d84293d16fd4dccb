"""Endpoints do not hold each other up, a pause stops calls at once, and no change leaves a
CRM writer that cannot deliver in silence.

- 20 endpoints that never answer beside one healthy one: the healthy one's delivery latency
  stays within 2x of the same run with the 20 paused (each endpoint has its own connections
  and its own DNS thread).
- Pausing them cancels their calls in flight and starts no new one within a second; resumed,
  the deliveries they held go out again.
- A PATCH is validated as a create is; a writer stored with a configuration that cannot
  deliver has its deliveries set aside with the reason (the failed-deliveries alert's gauge).
"""

from __future__ import annotations

import statistics
import time
from typing import Any

from bench.workload import generate, lead_key
from services.runtime.bootstrap import bootstrap
from tests.helpers.database import db_fetch, drained
from tests.helpers.kafka import produce
from tests.helpers.receivers import Hung, Receiver, hanging, receiving
from tests.helpers.service import RunningService, client_for
from tests.helpers.waiting import wait_for

HUNG_ENDPOINTS = 20
SETTINGS = {
    "outbound_allow_private": True,
    "outbound_allow_http": True,
    "webhook_backoff_seconds": 0.05,
    "webhook_backoff_cap_seconds": 0.2,
    # A hung call holds its connection this long: far longer than a healthy delivery takes.
    "webhook_timeout_seconds": 20.0,
    "webhook_poll_seconds": 0.1,
}
# Below this, latencies are the machine's noise (a scoring batch holding the event loop, a
# poll; the whole suite running beside the test), not a queue: with one shared connection
# pool the healthy endpoint's deliveries waited tens of seconds here.
NOISE_FLOOR_SECONDS = 0.5


async def latencies(settings: Any, endpoint_id: str, after_id: int) -> list[float]:
    rows = await db_fetch(
        settings,
        "SELECT extract(epoch FROM delivered_at - queued_at)::float8 AS s FROM "
        "webhook_deliveries WHERE endpoint_id = $1 AND state = 'delivered' AND id > $2",
        endpoint_id,
        after_id,
    )
    return sorted(r["s"] for r in rows)


async def delivered_all(settings: Any, endpoint_id: str) -> bool:
    rows = await db_fetch(
        settings,
        "SELECT count(*) FILTER (WHERE state <> 'delivered') AS waiting, count(*) AS n "
        "FROM webhook_deliveries WHERE endpoint_id = $1",
        endpoint_id,
    )
    return bool(rows[0]["n"] and rows[0]["waiting"] == 0)


async def last_delivery(settings: Any) -> int:
    rows = await db_fetch(settings, "SELECT coalesce(max(id), 0) AS n FROM webhook_deliveries")
    return int(rows[0]["n"])


def p90(values: list[float]) -> float:
    return values[int(0.9 * (len(values) - 1))]


async def test_hung_endpoints_neither_delay_a_healthy_one_nor_outlast_a_pause(settings):
    settings = settings.with_changes(**SETTINGS)
    healthy, hung = Receiver(), Hung()
    async with receiving(healthy), hanging(hung):
        running = await RunningService(bootstrap(settings)).start()
        try:
            async with client_for(running.container) as admin:
                # Paced fast enough that its latency is the dispatcher's, not its own queue's.
                made = await admin.post(
                    "/v1/webhooks",
                    json={"name": "healthy", "url": healthy.url + "/hook", "rate_per_second": 500},
                )
                assert made.status_code == 201, made.text
                good = made.json()
                healthy.secret = good["secret"]

                # The 20 endpoints exist from the start, paused, so that both runs queue the
                # same deliveries (each record makes one per endpoint, in the scoring
                # transaction): the runs differ only in whether the 20 are calling.
                stuck = []
                for n in range(HUNG_ENDPOINTS):
                    answer = await admin.post(
                        "/v1/webhooks",
                        json={"name": f"hung {n}", "url": f"{hung.url}/h{n}", "paused": True},
                    )
                    assert answer.status_code == 201, answer.text
                    stuck.append(answer.json()["id"])

                # Without them calling.
                alone = list(generate(events=1200, leads=120, seed=3, recent=True, days=3))
                await produce(settings, alone, key=lead_key)
                await wait_for(lambda: drained(settings, len(alone)), timeout=60)
                await wait_for(lambda: delivered_all(settings, good["id"]), timeout=60)
                before = await latencies(settings, good["id"], 0)
                assert len(before) > 20, "the workload must make records for this to mean much"
                boundary = await last_delivery(settings)
                assert hung.starts == []

                # Beside 20 endpoints that never answer.
                for endpoint_id in stuck:
                    answer = await admin.patch(
                        f"/v1/webhooks/{endpoint_id}", json={"paused": False}
                    )
                    assert answer.status_code == 200, answer.text
                await wait_for(lambda: hung.open_now >= 100, timeout=30, what="the 20 calling")
                crowded = list(generate(events=1200, leads=120, seed=4, recent=True, days=3))
                await produce(settings, crowded, key=lead_key)
                await wait_for(lambda: drained(settings, len(alone) + len(crowded)), timeout=60)
                await wait_for(lambda: delivered_all(settings, good["id"]), timeout=120)
                after = await latencies(settings, good["id"], boundary)
                assert len(after) > 20
                for measure in (statistics.median, p90):
                    assert measure(after) <= 2 * max(measure(before), NOISE_FLOOR_SECONDS), (
                        measure.__name__,
                        before,
                        after,
                    )
                # The hung endpoints were really holding connections meanwhile: more than one
                # shared pool of httpx's default size (100) could have given them.
                assert hung.most_open > 100, hung.most_open

                # Paused: calls in flight stop, and none starts after a second.
                paused_at: dict[str, float] = {}
                for n, endpoint_id in enumerate(stuck):
                    answer = await admin.patch(f"/v1/webhooks/{endpoint_id}", json={"paused": True})
                    assert answer.status_code == 200 and answer.json()["paused"] is True
                    paused_at[f"/h{n}"] = time.monotonic()
                await wait_for(lambda: hung.open_now == 0, timeout=10, what="calls cancelled")
                # More records for everyone: the healthy endpoint takes them, the paused ones
                # queue them and call nobody.
                more = list(generate(events=200, leads=20, seed=5, recent=True, days=3))
                await produce(settings, more, key=lead_key)
                total = len(alone) + len(crowded) + len(more)
                await wait_for(lambda: drained(settings, total), timeout=60)
                await wait_for(lambda: delivered_all(settings, good["id"]), timeout=60)
                late = [(at, path) for at, path in hung.starts if at > paused_at[path] + 1.0]
                assert late == []
                assert hung.open_now == 0

                # Resumed: what it held goes out again at once (its claims were given back).
                calls = len([1 for _, path in hung.starts if path == "/h0"])
                resumed = await admin.patch(f"/v1/webhooks/{stuck[0]}", json={"paused": False})
                assert resumed.status_code == 200
                await wait_for(
                    lambda: len([1 for _, path in hung.starts if path == "/h0"]) > calls,
                    timeout=10,
                    what="the resumed endpoint called again",
                )
                await admin.delete(f"/v1/webhooks/{stuck[0]}")
                await wait_for(lambda: hung.open_now == 0, timeout=10, what="deleted: cancelled")
        finally:
            await running.close()


CRM = {
    "name": "hubspot",
    "kind": "hubspot",
    "url": "https://api.hubapi.example",
    "token": "pat-na1-0123456789",
    "records": ["transitions"],
    "mapping": {
        "object": "contacts",
        "id_property": "leadscore_id",
        "id_from": "email",
        "properties": {"leadscore_score": "score"},
    },
}


async def test_a_change_is_validated_as_a_create_is(admin_container):
    async with client_for(admin_container, "admin") as admin:
        made = await admin.post("/v1/webhooks", json=CRM)
        assert made.status_code == 201, made.text
        endpoint = made.json()["id"]
        url = f"/v1/webhooks/{endpoint}"
        for mapping, where in (
            ({**CRM["mapping"], "object": "../../../../internal/admin?drop=1&x="}, "object"),
            ({**CRM["mapping"], "object": "Lead"}, "mapping"),  # a Salesforce object
            ({"object": "contacts", "properties": {"s": "score"}}, "id_property"),
        ):
            refused = await admin.patch(url, json={"mapping": mapping})
            assert refused.status_code == 422, refused.text
            assert where in str(refused.json()["detail"])
        for bad in ({"url": "https://127.1/x"}, {"rate_per_second": "5"}, {"name": None}):
            assert (await admin.patch(url, json=bad)).status_code == 422
        # A mapping without id_from takes the default, as a create does: it is stored whole.
        partial = {k: v for k, v in CRM["mapping"].items() if k != "id_from"}
        changed = await admin.patch(url, json={"mapping": partial})
        assert changed.status_code == 200, changed.text
        assert changed.json()["mapping"]["id_from"] == "lead_id"
        stored = (await admin.get(url)).json()["mapping"]
        assert stored == {**partial, "id_from": "lead_id"}
        hook = (await admin.post("/v1/webhooks", json={"name": "w", "url": CRM["url"]})).json()
        mapped = await admin.patch(f"/v1/webhooks/{hook['id']}", json={"mapping": partial})
        assert mapped.status_code == 422


async def test_a_writer_stored_unable_to_deliver_has_its_deliveries_set_aside(settings):
    settings = settings.with_changes(**SETTINGS)
    healthy = Receiver(token=CRM["token"])
    async with receiving(healthy):
        running = await RunningService(bootstrap(settings)).start()
        try:
            async with client_for(running.container) as admin:
                made = await admin.post("/v1/webhooks", json={**CRM, "url": healthy.url})
                assert made.status_code == 201, made.text
                endpoint = made.json()["id"]
                # As an older release let a PATCH store it: a path in the object's place.
                await db_fetch(
                    settings,
                    "UPDATE webhook_endpoints SET mapping = jsonb_set(mapping, '{object}', "
                    "'\"../../../../internal/admin?drop=1&x=\"') WHERE id = $1",
                    endpoint,
                )
                docs = list(generate(events=300, leads=30, seed=8, recent=True, days=3))
                await produce(settings, docs, key=lead_key)
                await wait_for(lambda: drained(settings, len(docs)), timeout=60)

                async def all_set_aside() -> dict[str, Any] | None:
                    state = (await admin.get(f"/v1/webhooks/{endpoint}")).json()
                    return state if state["failed"] and not state["pending"] else None

                state = await wait_for(all_set_aside, timeout=30, what="deliveries set aside")
                failed = (
                    await admin.get(
                        f"/v1/webhooks/{endpoint}/deliveries", params={"state": "failed"}
                    )
                ).json()["items"]
                assert failed and all(
                    f["reason"].startswith("configuration: mapping.object") for f in failed
                )
                assert all(f["attempts"] == 0 for f in failed)
                assert healthy.crm_requests == [], "no request went anywhere"
                assert state["failed"] == len(failed)
                gauge = f'leadscore_webhook_failed_deliveries{{endpoint="{endpoint}"}}'
                shown = f"{gauge} {float(len(failed))}"

                async def gauge_shows() -> bool:
                    return shown in (await admin.get("/metrics")).text

                await wait_for(gauge_shows, timeout=15, what="the alert's gauge")
                # Pausing is always allowed, even for an endpoint stored broken.
                paused = await admin.patch(f"/v1/webhooks/{endpoint}", json={"paused": True})
                assert paused.status_code == 200, paused.text
        finally:
            await running.close()
