"""A person's erasure and suppression, on a real broker and database: Chris of the buying
committee is erased by his e-mail address while his colleagues' events and his own keep
arriving. Afterwards no table, history partition or outbox row holds any of his names,
everyone else is as a replay without him, his account's roll-up is too, and his later
events are dropped as suppressed until he is unsuppressed."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime
from typing import Any

import orjson

from schemas.records import ErasureRecord
from services.runtime.bootstrap import bootstrap
from services.settings import Settings
from tests.helpers.committee import ACCOUNT, committee_journey, person
from tests.helpers.database import db_fetch, drained
from tests.helpers.factories import at, identify, page, track
from tests.helpers.kafka import produce, read_all
from tests.helpers.receivers import Receiver, receiving
from tests.helpers.replays import assert_accounts_match, assert_leads_match, replay
from tests.helpers.service import RunningService, client_for, token_settings
from tests.helpers.waiting import FakeClock, wait_for

CHRIS = ("u-chris", "a-chris", "chris@haulers.example")


def is_chris(doc: dict[str, Any]) -> bool:
    return doc.get("userId") == "u-chris" or doc.get("anonymousId") == "a-chris"


def others(n: int, start: int) -> list[dict[str, Any]]:
    """Other people's visits, so the erasure runs among unrelated batches."""
    return [
        page(
            "/pricing" if i % 3 else "/blog/post-1", user=f"u-other-{i % 40}", when=at(2, seconds=i)
        )
        for i in range(start, start + n)
    ]


async def everywhere(settings: Settings, needles: tuple[str, ...]) -> dict[str, list[Any]]:
    """Rows of every table (each history month included) with any needle in any column,
    bytes (outbox values, webhook payloads) read as text."""
    columns = await db_fetch(
        settings,
        "SELECT c.relname AS t, a.attname AS col, format_type(a.atttypid, NULL) AS type "
        "FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
        "JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped "
        "WHERE n.nspname = 'public' AND c.relkind = 'r' ORDER BY 1, a.attnum",
    )
    tables: dict[str, list[str]] = {}
    for row in columns:
        text = (
            f"encode({row['col']}, 'escape')" if row["type"] == "bytea" else f"{row['col']}::text"
        )
        tables.setdefault(row["t"], []).append(f"coalesce({text}, '')")
    found: dict[str, list[Any]] = {}
    for table, texts in tables.items():
        whole = " || ' ' || ".join(texts)
        rows = await db_fetch(
            settings,
            f"SELECT * FROM {table} WHERE "
            + " OR ".join(
                f"({whole}) ILIKE '%' || ${i} || '%'" for i in range(1, len(needles) + 1)
            ),
            *needles,
        )
        if rows:
            found[table] = rows
    return found


async def request_done(admin: Any, request_id: str) -> dict[str, Any] | None:
    request = (await admin.get(f"/v1/people/requests/{request_id}")).json()
    return request if request["status"] != "received" else None


async def test_a_person_erased_mid_stream_is_gone_and_stays_out(settings: Settings) -> None:
    journey = committee_journey()
    first, rest = journey[:12], journey[12:]
    before, during = others(60, 0), others(60, 60)
    service = await RunningService(bootstrap(token_settings(settings))).start()
    try:
        await produce(settings, [*first, *before])
        await wait_for(lambda: drained(settings, len(first) + len(before)), what="before")
        async with client_for(service.container, "admin") as admin:
            # The erasure and more events, his among them, at the same time.
            answer, _ = await asyncio.gather(
                admin.post("/v1/people/erasures", json={"email": "Chris@Haulers.example"}),
                produce(settings, [*rest, *during]),
            )
            assert answer.status_code == 202, answer.text
            request = answer.json()
            assert request["status"] == "received" and request["found_by"] == "email"
            done = await wait_for(lambda: request_done(admin, request["id"]), what="erasure")
            sent = len(first) + len(before) + len(rest) + len(during)
            await wait_for(lambda: drained(settings, sent), what="the rest")
            # Later events by each of his names, and his address under a new id.
            later = [
                page("/pricing", user="u-chris", when=at(20)),
                page("/pricing", anon="a-chris", when=at(20, hours=1)),
                identify(person("chris", "Head of Operations"), anon="a-chris-laptop", when=at(21)),
            ]
            suppressed = service.container.metrics.events.labels("suppressed")
            dropped_before = suppressed._value.get()
            await produce(settings, later)
            await wait_for(lambda: drained(settings, sent + len(later)), what="his later events")
            assert suppressed._value.get() - dropped_before == len(later)

            # Nothing of him is left, anywhere, but the notice that names his lead so that
            # downstream systems erase it too (kept as published records are, for a while).
            left = await everywhere(settings, CHRIS)
            assert set(left) == {"outbox"}, left
            [notice] = left["outbox"]
            assert notice["topic"] == settings.topic_erasures
            assert orjson.loads(notice["value"])["lead_id"] == "u-chris"
            assert done["status"] == "done" and done["leads"] == 1
            assert done["removed"]["leads"] == 1 and done["removed"]["identity_links"] == 1
            assert done["removed"]["lead_events"] >= 3
            # Everyone else, and the account's roll-up, as if he had never been there.
            without = [d for d in [*first, *before, *rest, *during] if not is_chris(d)]
            expected = replay(without)
            await assert_leads_match(settings, expected)
            await assert_accounts_match(settings, expected)
            assert ACCOUNT in expected.ws.accounts

            # Downstream systems are told, by lead id only.
            [record] = await read_all(settings, settings.topic_erasures, expect=1)
            erasure = ErasureRecord.model_validate(orjson.loads(record.value))
            assert (record.key, erasure.lead_id) == (b"u-chris", "u-chris")
            assert erasure.request_id == request["id"] and erasure.suppressed

            # Asking again gives the same erasure; the request list never names him.
            again = await admin.post("/v1/people/erasures", json={"user_id": "u-chris"})
            assert (again.status_code, again.json()["id"]) == (200, request["id"])
            listed = (await admin.get("/v1/people/requests")).text
            assert request["id"] in listed and "chris" not in listed.lower()

            # He signs up again: unsuppressed, his events count once more.
            back = await admin.post("/v1/people/unsuppress", json={"user_id": "u-chris"})
            assert back.status_code == 200 and back.json()["removed"]["suppressed_keys"] >= 3
            back_again = track("Demo Requested", user="u-chris", when=at(30))
            await produce(settings, [back_again])
            await wait_for(lambda: drained(settings, sent + len(later) + 1), what="his return")
            history = await admin.get("/v1/leads/u-chris/history")
            assert history.status_code == 200
            assert [e["message_id"] for e in history.json()["events"]] == [back_again["messageId"]]
            gone = await admin.post("/v1/people/unsuppress", json={"user_id": "u-chris"})
            assert gone.status_code == 404 and gone.json()["error"] == "not_suppressed"
    finally:
        await service.close()


async def test_erasure_requests_refuse_what_names_nobody(admin_container) -> None:
    async with client_for(admin_container, "admin") as admin:
        answers = {
            "unknown": await admin.post("/v1/people/erasures", json={"user_id": "nobody-here"}),
            "wildcard": await admin.post("/v1/people/erasures", json={"email": "%@%"}),
            "star": await admin.post("/v1/people/erasures", json={"lead_id": "*"}),
            "empty": await admin.post("/v1/people/erasures", json={"lead_id": ""}),
            "none": await admin.post("/v1/people/erasures", json={}),
            "two": await admin.post(
                "/v1/people/erasures", json={"user_id": "a", "anonymous_id": "b"}
            ),
            "stranger": await admin.post("/v1/people/erasures", json={"user_id": "a", "x": 1}),
            "not a flag": await admin.post(
                "/v1/people/erasures", json={"user_id": "a", "suppress": "yes"}
            ),
            "nul": await admin.post("/v1/people/erasures", json={"email": "a\x00@b.c"}),
            "surrogate": await admin.post(
                "/v1/people/erasures",
                content=b'{"user_id": "\\ud800x"}',
                headers={"content-type": "application/json"},
            ),
            "no such request": await admin.get("/v1/people/requests/not-a-uuid"),
            "unsuppress nobody": await admin.post("/v1/people/unsuppress", json={"email": "x@y.z"}),
        }
    codes = {name: (a.status_code, a.json().get("error")) for name, a in answers.items()}
    assert codes["unknown"] == (404, "person_not_found")
    assert codes["no such request"] == (404, "request_not_found")
    assert codes["unsuppress nobody"] == (404, "not_suppressed")
    assert codes["star"] == codes["nul"] == (422, "invalid_identifier")
    assert codes["none"] == codes["two"] == (422, "one_identifier")
    for name in ("wildcard", "empty", "stranger", "not a flag", "surrogate"):
        assert codes[name][0] == 422, (name, codes[name])
    async with client_for(admin_container, "viewer") as viewer:
        refused = [
            await viewer.post("/v1/people/erasures", json={"user_id": "u-42"}),
            await viewer.post("/v1/people/unsuppress", json={"user_id": "u-42"}),
            await viewer.get("/v1/people/requests"),
        ]
    assert [a.status_code for a in refused] == [403, 403, 403]


FAST_OUTBOUND = {
    "outbound_allow_private": True,
    "outbound_allow_http": True,
    "webhook_backoff_seconds": 0.05,
    "webhook_backoff_cap_seconds": 0.2,
    "webhook_poll_seconds": 0.1,
}


async def test_webhooks_and_crm_writers_are_told_to_erase(settings: Settings) -> None:
    settings = settings.with_changes(**FAST_OUTBOUND)
    receiver = Receiver(token="pat-na1-0123456789")
    async with receiving(receiver):
        service = await RunningService(bootstrap(settings)).start()
        try:
            async with client_for(service.container) as admin:
                hook = (
                    await admin.post(
                        "/v1/webhooks",
                        json={
                            "name": "warehouse",
                            "url": f"{receiver.url}/hook",
                            "records": ["erasures"],
                        },
                    )
                ).json()
                receiver.secret = hook["secret"]
                crm = {
                    "url": receiver.url,
                    "token": receiver.token,
                    "records": ["transitions", "erasures"],
                }
                await admin.post(
                    "/v1/webhooks",
                    json={
                        **crm,
                        "name": "hubspot",
                        "kind": "hubspot",
                        "mapping": {
                            "object": "contacts",
                            "id_property": "leadscore_id",
                            "properties": {"leadscore_stage": "stage"},
                        },
                    },
                )
                await admin.post(
                    "/v1/webhooks",
                    json={
                        **crm,
                        "name": "salesforce",
                        "kind": "salesforce",
                        "mapping": {
                            "object": "Lead",
                            "id_property": "Leadscore_Id__c",
                            "properties": {"Stage__c": "stage"},
                        },
                    },
                )
                journey = committee_journey()
                await produce(settings, journey)
                await wait_for(lambda: drained(settings, len(journey)), what="the committee")
                answer = await admin.post("/v1/people/erasures", json={"user_id": "u-tina"})
                request = answer.json()
                await wait_for(lambda: request_done(admin, request["id"]), what="erasure")

                def deletes() -> list[dict[str, Any]]:
                    return [
                        r
                        for r in receiver.crm_requests
                        if r.get("method") == "DELETE" or "objectId" in r
                    ]

                await wait_for(
                    lambda: len(deletes()) == 2 and receiver.accepted, what="the deletes"
                )
            assert receiver.complaints == []
            [message] = receiver.accepted
            assert message["type"] == "lead.erased"
            assert message["data"]["lead_id"] == "u-tina"
            hubspot, salesforce = sorted(deletes(), key=lambda r: r["vendor"])
            assert (hubspot["objectId"], hubspot["idProperty"]) == ("u-tina", "leadscore_id")
            assert hubspot["path"] == "/crm/v3/objects/contacts/gdpr-delete"
            assert (salesforce["sobject"], salesforce["field"], salesforce["value"]) == (
                "Lead",
                "Leadscore_Id__c",
                "u-tina",
            )

            # Nothing of hers waits to be sent: her earlier deliveries went with her, and
            # the three erasures are recorded delivered once the answers are in.
            async def her_deliveries() -> bool:
                left = await db_fetch(
                    settings,
                    "SELECT kind, state FROM webhook_deliveries WHERE subject = 'u-tina'",
                )
                return (
                    sorted((r["kind"], r["state"]) for r in left) == [("erasures", "delivered")] * 3
                )

            await wait_for(her_deliveries, what="only her erasures, delivered")
        finally:
            await service.close()


async def test_leads_idle_past_their_retention_are_erased_whole(settings: Settings) -> None:
    settings = settings.with_changes(lead_retention_days=30, erasure_check_seconds=0.1)
    service = await RunningService(bootstrap(settings)).start()
    try:
        erasures = service.container.erasures
        clock = FakeClock(time.time())
        erasures.clock = clock
        recent = datetime.now(UTC).isoformat().replace("+00:00", "Z")
        docs = [
            identify(person("olga", "CTO"), user="u-old", when=at(0)),  # over 30 days ago
            page("/pricing", user="u-old", when=at(0, hours=1)),
            page("/pricing", user="u-new", when=recent),
        ]
        await produce(settings, docs)
        await wait_for(lambda: drained(settings, len(docs)), what="both leads")
        clock.now += 3601  # the next hourly sweep is due
        erasures.notify()
        async with client_for(service.container) as admin:

            async def erased() -> dict[str, Any] | None:
                listed = (await admin.get("/v1/people/requests")).json()["requests"]
                done = [r for r in listed if r["status"] == "done"]
                return done[0] if done else None

            request = await wait_for(erased, what="the idle lead erased")
            assert (request["requested_by"], request["found_by"]) == ("retention", "lead_id")
            assert request["suppress"] is False and request["leads"] == 1
            assert (await admin.get("/v1/leads/u-old")).status_code == 404
            assert (await admin.get("/v1/leads/u-new")).status_code == 200
        left = await everywhere(settings, ("u-old", "olga@haulers"))
        assert [row["topic"] for row in left.pop("outbox")] == [settings.topic_erasures]
        assert left == {}
        # Not suppressed: the next visit starts a new lead.
        await produce(settings, [page("/pricing", user="u-old", when=recent)])
        await wait_for(lambda: drained(settings, len(docs) + 1), what="a new visit")
        assert await db_fetch(settings, "SELECT 1 FROM leads WHERE lead_id = 'u-old'")
    finally:
        await service.close()


async def test_the_console_queues_erasures_and_lists_requests_without_names(
    admin_container,
) -> None:
    from tests.integration.test_console import (
        assert_words_not_trace,
        console_client,
        csrf_of,
        sign_in,
    )

    async with admin_container.db.connect() as conn:
        await conn.exec_driver_sql(
            "INSERT INTO leads (lead_id, stage, traits) VALUES "
            "('u-console', 'lead', '{\"email\": \"carla@console.example\"}')"
        )
        await conn.commit()
    async with console_client(admin_container) as viewer:
        await sign_in(viewer, "viewer")
        assert_words_not_trace(await viewer.get("/console/people"), 403, "viewer role")
        csrf = csrf_of((await viewer.get("/console/leads")).text)
        refused = await viewer.post(
            "/console/people/erase", data={"csrf": csrf, "kind": "lead_id", "value": "u-console"}
        )
        assert_words_not_trace(refused, 403, "viewer role")
    async with console_client(admin_container) as admin:
        await sign_in(admin, "admin")
        page = await admin.get("/console/people")
        assert page.status_code == 200 and "Erase a person" in page.text
        csrf = csrf_of(page.text)
        nobody = await admin.post(
            "/console/people/erase",
            data={"csrf": csrf, "kind": "user_id", "value": "<script>x</script>"},
        )
        assert_words_not_trace(nobody, 404, "no lead is known by that user_id")
        assert "<script>x" not in nobody.text
        odd = await admin.post(
            "/console/people/erase", data={"csrf": csrf, "kind": "phone", "value": "1"}
        )
        assert_words_not_trace(odd, 422, "choose what names the person")
        queued = await admin.post(
            "/console/people/erase",
            data={
                "csrf": csrf,
                "kind": "email",
                "value": "Carla@Console.example",
                "suppress": "on",
            },
        )
        assert queued.status_code == 303 and "queued" in queued.headers["location"]
        listed = await admin.get("/console/people")
        assert "<td>received</td>" in listed.text
        assert "carla" not in listed.text.lower() and "u-console" not in listed.text
        assert "<td>email</td>" in listed.text
