"""kill -9 of the service while it delivers webhooks: a restarted one delivers every record
still owed (a claim held by the dead process expires and is taken over), each lead's in
order, under the ids they had; copies are only the few that were in flight."""

from __future__ import annotations

import signal
from collections import defaultdict

import httpx
from cryptography.fernet import Fernet

from bench.harness import start_service
from bench.workload import generate, lead_key
from services.runtime.embedded import free_port
from tests.helpers.database import drained
from tests.helpers.kafka import produce
from tests.helpers.receivers import Receiver, receiving
from tests.helpers.waiting import wait_for
from tests.integration.test_webhooks import queued

FAST = {
    "LEADSCORE_OUTBOUND_ALLOW_PRIVATE": "true",
    "LEADSCORE_OUTBOUND_ALLOW_HTTP": "true",
    "LEADSCORE_WEBHOOK_BACKOFF_SECONDS": "0.05",
    "LEADSCORE_WEBHOOK_BACKOFF_CAP_SECONDS": "0.2",
    "LEADSCORE_WEBHOOK_POLL_SECONDS": "0.1",
    "LEADSCORE_WEBHOOK_CONCURRENCY": "4",
}


async def test_kill_9_mid_delivery_loses_no_webhook(settings, tmp_path):
    settings = settings.with_changes(http_port=free_port())
    env = {**FAST, "LEADSCORE_SECRETS_KEY": Fernet.generate_key().decode()}
    log = tmp_path / "service.log"
    receiver = Receiver(answer_seconds=0.02)
    async with receiving(receiver):
        first = start_service(settings, log, **env)
        try:
            api = f"http://127.0.0.1:{settings.http_port}"
            async with httpx.AsyncClient(base_url=api) as client:
                await wait_for(lambda: ready(client), timeout=120, what="the service ready")
                made = await client.post(
                    "/v1/webhooks", json={"name": "bridge", "url": receiver.url + "/hook"}
                )
                assert made.status_code == 201, made.text
                receiver.secret = made.json()["secret"]
            docs = list(generate(events=1_500, leads=60, seed=41, recent=True, days=10))
            await produce(settings, docs, key=lead_key)
            await wait_for(lambda: drained(settings, len(docs)), timeout=120)
            expected = await queued(
                settings, [settings.topic_transitions, settings.topic_notifications]
            )
            await wait_for(
                lambda: len(receiver.accepted_ids) >= len(expected) // 3,
                timeout=60,
                what="a third delivered",
            )
            first.send_signal(signal.SIGKILL)
            first.wait(10)
            assert len(receiver.accepted_ids) < len(expected), "the kill should land mid-way"
        finally:
            if first.poll() is None:
                first.kill()

        second = start_service(settings, log, **env)
        try:
            await wait_for(
                lambda: {rid for rid, _ in expected} <= set(receiver.accepted_ids),
                timeout=120,
                what="every record delivered after the restart",
            )
        finally:
            second.send_signal(signal.SIGTERM)
            assert second.wait(30) == 0, log.read_text()[-3000:]

    # Follow-up breaches keep coming while the service runs: the outbox as it ended holds
    # every record any delivery can be of.
    final = await queued(settings, [settings.topic_transitions, settings.topic_notifications])
    assert receiver.complaints == []
    assert len(set(receiver.accepted_ids)) == len(receiver.accepted_ids)
    assert set(receiver.accepted_ids) <= {rid for rid, _ in final}
    by_lead: dict[str, list[str]] = defaultdict(list)
    for rid, lead in final:
        by_lead[lead].append(rid)
    arrived: dict[str, list[str]] = defaultdict(list)
    for message in receiver.accepted:
        data = message["data"]
        arrived[data["lead_id"]].append(data.get("transition_id") or data["notification_id"])
    # Each lead's records arrived in the order queued, with none skipped.
    for lead, ids in arrived.items():
        assert ids == by_lead[lead][: len(ids)], lead
    # At least once: only what was in flight at the kill came twice (4 at a time).
    copies = len(receiver.attempts) - len(receiver.accepted_ids)
    assert copies <= 4


async def ready(client: httpx.AsyncClient) -> bool:
    try:
        return (await client.get("/readyz")).status_code == 200
    except httpx.TransportError:
        return False
