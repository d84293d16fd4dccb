"""kill -9 in the middle of an erasure: after a restart the person is gone, and at no moment
were they half gone.

To land the kill inside the erasure's transaction every time, the test holds a lock on one
of the person's outbox rows: the erasure's statement, which deletes the person's rows in
every table, waits for that row with the transaction open. The service is killed there; the
transaction never commits, so the person is whole until the next service carries the
request out, whole."""

from __future__ import annotations

import signal
from pathlib import Path
from typing import Any

import orjson

from bench.harness import start_service
from schemas import api
from services.app import people
from services.runtime.bootstrap import bootstrap
from tests.helpers.database import connect_db, db_fetch, drained
from tests.helpers.kafka import produce
from tests.helpers.waiting import wait_for

ROOT = Path(__file__).resolve().parents[2]
EVENTS = [
    orjson.loads(line)
    for line in (ROOT / "examples" / "journey.jsonl").read_bytes().splitlines()
    if line.strip()
]
QUICK = {"LEADSCORE_ERASURE_CHECK_SECONDS": "0.1"}


async def held_of_dana(settings: Any) -> dict[str, int]:
    counts = await db_fetch(
        settings,
        "SELECT (SELECT count(*) FROM leads WHERE lead_id = 'u-42') AS leads, "
        "(SELECT count(*) FROM identity_links WHERE lead_id = 'u-42') AS links, "
        "(SELECT count(*) FROM lead_events WHERE lead_id = 'u-42') AS events, "
        "(SELECT count(*) FROM transitions WHERE lead_id = 'u-42') AS transitions, "
        "(SELECT count(*) FROM handoffs WHERE lead_id = 'u-42') AS handoffs",
    )
    return dict(counts[0])


async def erasure_waiting_for_the_lock(settings: Any) -> bool:
    rows = await db_fetch(
        settings,
        "SELECT 1 FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
        "AND query LIKE '%DELETE FROM outbox%' AND pid <> pg_backend_pid()",
    )
    return bool(rows)


async def no_erasure_running(settings: Any) -> bool:
    rows = await db_fetch(
        settings,
        "SELECT 1 FROM pg_stat_activity WHERE query LIKE '%DELETE FROM outbox%' "
        "AND state <> 'idle' AND pid <> pg_backend_pid()",
    )
    return not rows


async def request_status(settings: Any, request_id: str) -> str:
    rows = await db_fetch(
        settings, "SELECT status FROM person_requests WHERE id = $1::uuid", request_id
    )
    return str(rows[0]["status"])


async def is_done(settings: Any, request_id: str) -> bool:
    return await request_status(settings, request_id) == "done"


async def test_kill_9_during_an_erasure_leaves_the_person_whole_then_gone(
    settings, tmp_path
) -> None:
    log = tmp_path / "service.log"
    first = start_service(settings, log, **QUICK)
    blocker = None
    try:
        await produce(settings, EVENTS)
        await wait_for(lambda: drained(settings, len(EVENTS)), timeout=60, what="the journey")
        whole = await held_of_dana(settings)
        assert whole["leads"] == 1 and whole["events"] == len(EVENTS) and whole["handoffs"]

        blocker = await connect_db(settings)
        lock = blocker.transaction()
        await lock.start()
        await blocker.execute("SELECT 1 FROM outbox WHERE key = 'u-42'::bytea FOR UPDATE")
        container = bootstrap(settings)
        try:
            request, _ = await people.request_erasure(
                container, api.ErasureRequest(email="dana@trucking-co.com"), by="test"
            )
        finally:
            await container.close()
        await wait_for(lambda: erasure_waiting_for_the_lock(settings), what="the erasure")
        first.send_signal(signal.SIGKILL)
        first.wait(10)
        await lock.rollback()
        await wait_for(lambda: no_erasure_running(settings), what="the killed erasure undone")
    finally:
        if blocker is not None:
            await blocker.close()
        if first.poll() is None:
            first.kill()

    # Killed inside the erasure: nothing of it happened.
    assert await held_of_dana(settings) == whole
    assert await request_status(settings, request.id) == "received"

    second = start_service(settings, log, **QUICK)
    try:
        await wait_for(
            lambda: is_done(settings, request.id),
            timeout=60,
            what="the erasure carried out after the restart",
        )
        assert await held_of_dana(settings) == {
            "leads": 0,
            "links": 0,
            "events": 0,
            "transitions": 0,
            "handoffs": 0,
        }
    finally:
        second.send_signal(signal.SIGTERM)
        assert second.wait(30) == 0, log.read_text()[-3000:]
