"""Console sessions kept in PostgreSQL: sign-out ends them for good, idleness and age end them,
an admin ends one or all of a token's, a removed token ends its own, a restart keeps them."""

from __future__ import annotations

import re

import httpx

from services.app.sessions import session_id
from services.runtime.bootstrap import bootstrap
from tests.helpers.database import db_fetch
from tests.helpers.service import TOKENS, client_for, token_settings
from tests.helpers.waiting import FakeClock
from tests.integration.test_console import console_client, csrf_of, sign_in

START = 1_900_000_000.0


def cookie_value(set_cookie: str) -> str:
    match = re.search(r"leadscore_console=([^;]+)", set_cookie)
    assert match, set_cookie
    return match.group(1)


def replaying(container, cookie: str, host: str = "127.0.0.1") -> httpx.AsyncClient:
    """A client that presents a copied cookie and nothing else (a new browser, a proxy log)."""
    client = console_client(container, host)
    client.headers["Cookie"] = f"leadscore_console={cookie}"
    return client


async def signed_in_page(client: httpx.AsyncClient) -> bool:
    answer = await client.get("/console/rules")
    if answer.status_code == 303:
        assert answer.headers["location"].startswith("/console/signin")
        return False
    assert answer.status_code == 200, answer.text[:300]
    return True


async def test_a_cookie_replayed_after_sign_out_is_refused_for_reads_and_writes(admin_container):
    async with console_client(admin_container) as browser:
        cookie = cookie_value(await sign_in(browser, "admin"))
        csrf = csrf_of((await browser.get("/console/rules")).text)
        assert await db_fetch(
            admin_container.settings,
            "SELECT 1 FROM console_sessions WHERE id = $1",
            session_id(cookie),
        )
        answer = await browser.post("/console/signout", data={"csrf": csrf})
        assert answer.status_code == 303
        assert 'leadscore_console=""' in answer.headers["set-cookie"]
    rows = await db_fetch(admin_container.settings, "SELECT id FROM console_sessions")
    assert rows == []
    async with replaying(admin_container, cookie) as thief:
        assert not await signed_in_page(thief)
        refused = await thief.post("/console/rules/1/activate", data={"csrf": csrf})
        assert refused.status_code == 401 and "Sign in again" in refused.text
    audit = await db_fetch(
        admin_container.settings, "SELECT 1 FROM audit_log WHERE action = 'ruleset.activate'"
    )
    assert audit == []


async def test_a_session_ends_after_the_idle_time_and_after_its_lifetime_however_active(
    admin_container,
):
    clock = FakeClock(START)
    admin_container.sessions.clock = clock
    async with console_client(admin_container) as browser:
        idle_cookie = cookie_value(await sign_in(browser, "viewer"))
    for _ in range(3):  # active every 25 minutes: the 30-minute idle timeout never comes
        clock.now += 25 * 60
        async with replaying(admin_container, idle_cookie) as again:
            assert await signed_in_page(again)
    clock.now += 31 * 60
    async with replaying(admin_container, idle_cookie) as late:
        assert not await signed_in_page(late)

    async with console_client(admin_container) as browser:
        busy_cookie = cookie_value(await sign_in(browser, "viewer"))
    signed_in_at = clock.now
    while clock.now + 20 * 60 < signed_in_at + 8 * 3600:
        clock.now += 20 * 60
        async with replaying(admin_container, busy_cookie) as busy:
            assert await signed_in_page(busy)
    clock.now = signed_in_at + 8 * 3600
    async with replaying(admin_container, busy_cookie) as busy:
        assert not await signed_in_page(busy)
    assert await db_fetch(admin_container.settings, "SELECT id FROM console_sessions") == []


async def test_an_admin_lists_and_ends_one_session_or_all_of_a_tokens_and_it_is_audited(
    admin_container,
):
    cookies = []
    for _ in range(3):
        async with console_client(admin_container, host="10.9.8.7") as browser:
            cookies.append(cookie_value(await sign_in(browser, "viewer")))
    async with client_for(admin_container, "admin") as api:
        listed = (await api.get("/v1/sessions")).json()["items"]
        assert {s["id"] for s in listed} == {session_id(c) for c in cookies}
        assert {(s["token_name"], s["role"], s["client"]) for s in listed} == {
            ("viewer-user", "viewer", "10.9.8.7")
        }
        assert all(s["token_configured"] for s in listed)
        assert all(not any(c in str(s) for c in cookies) for s in listed)  # no secrets
        ended = await api.delete(f"/v1/sessions/{session_id(cookies[0])}")
        assert ended.json() == {"ended": 1}
        again = await api.delete(f"/v1/sessions/{session_id(cookies[0])}")
        assert (again.status_code, again.json()["error"]) == (404, "session_not_found")
        assert (await api.delete("/v1/sessions/not-an-id")).status_code == 422
        assert (await api.delete("/v1/sessions")).status_code == 422
        async with replaying(admin_container, cookies[0]) as first:
            assert not await signed_in_page(first)
        async with replaying(admin_container, cookies[1]) as second:
            assert await signed_in_page(second)
        both = await api.delete("/v1/sessions", params={"token": "viewer-user"})
        assert both.json() == {"ended": 2}
        for cookie in cookies[1:]:
            async with replaying(admin_container, cookie) as other:
                assert not await signed_in_page(other)
    async with client_for(admin_container, "viewer") as viewer:
        assert (await viewer.get("/v1/sessions")).status_code == 403
    audit = await db_fetch(
        admin_container.settings,
        "SELECT actor, action, target FROM audit_log WHERE action LIKE 'session.%' ORDER BY id",
    )
    assert [tuple(r) for r in audit] == [
        ("admin-user", "session.end", session_id(cookies[0])),
        ("admin-user", "session.end_all", "viewer-user"),
    ]


async def test_the_console_page_ends_a_session_and_every_session_of_a_token(admin_container):
    async with console_client(admin_container, host="10.9.8.7") as viewer:
        # A hostile browser name: control characters dropped, markup shown as text.
        viewer.headers["User-Agent"] = "<script>alert(1)</script>\x00\x07Bot"
        viewer_cookie = cookie_value(await sign_in(viewer, "viewer"))
    async with console_client(admin_container) as admin:
        await sign_in(admin, "admin")
        page = await admin.get("/console/sessions")
        assert (
            page.status_code == 200 and "viewer-user" in page.text and "this session" in page.text
        )
        assert "<script>alert" not in page.text
        assert "&lt;script&gt;alert(1)&lt;/script&gt;Bot" in page.text
        csrf = csrf_of(page.text)
        target = session_id(viewer_cookie)
        answer = await admin.post(f"/console/sessions/{target}/end", data={"csrf": csrf})
        assert answer.status_code == 303 and "Session+ended" in answer.headers["location"]
        async with replaying(admin_container, viewer_cookie) as gone:
            assert not await signed_in_page(gone)
        forged = await admin.post("/console/sessions/end-token", data={"token_name": "admin-user"})
        assert forged.status_code == 403
        mine = await admin.post(
            "/console/sessions/end-token", data={"csrf": csrf, "token_name": "admin-user"}
        )
        assert "Ended+1+session" in mine.headers["location"]
        assert not await signed_in_page(admin)  # that included the admin's own
    async with console_client(admin_container) as viewer:
        await sign_in(viewer, "viewer")
        refused = await viewer.get("/console/sessions")
        assert refused.status_code == 403 and "viewer role" in refused.text


async def test_a_restart_keeps_sessions_and_a_removed_token_ends_its_own(settings):
    from services.adapters.postgres import db

    with_tokens = token_settings(settings)
    first = bootstrap(with_tokens)
    await db.migrate(first.db)
    async with console_client(first) as browser:
        viewer_cookie = cookie_value(await sign_in(browser, "viewer"))
    async with console_client(first) as browser:
        admin_cookie = cookie_value(await sign_in(browser, "admin"))
    await first.close()

    restarted = bootstrap(with_tokens)  # a new process: same database, same tokens
    async with replaying(restarted, viewer_cookie) as viewer:
        assert await signed_in_page(viewer)
    await restarted.close()

    # The viewer's token is taken out of the configuration; the admin's stays.
    entries = with_tokens.api_tokens.get_secret_value().split(",")
    kept = ",".join(e for e in entries if not e.startswith("viewer-user:"))
    without_viewer = bootstrap(with_tokens.with_changes(api_tokens=kept))
    try:
        async with client_for(without_viewer, "admin") as api:
            listed = {s["token_name"]: s for s in (await api.get("/v1/sessions")).json()["items"]}
            assert listed["viewer-user"]["token_configured"] is False
        async with replaying(without_viewer, viewer_cookie) as viewer:
            assert not await signed_in_page(viewer)
        async with replaying(without_viewer, admin_cookie) as admin:
            assert await signed_in_page(admin)
        rows = await db_fetch(settings, "SELECT token_name FROM console_sessions")
        assert [r["token_name"] for r in rows] == ["admin-user"]
    finally:
        await without_viewer.close()
    assert TOKENS["viewer"] not in kept
