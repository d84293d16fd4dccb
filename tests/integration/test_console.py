"""The console over HTTP without a browser: who may see and do what, CSRF, cookies, and
hostile or wrong input answered with a page in words (never a 500, never a traceback)."""

from __future__ import annotations

import re

import httpx
import pytest

from services.http import create_app
from tests.helpers.service import TOKENS, client_for
from tests.helpers.waiting import wait_for


def console_client(container, host: str = "127.0.0.1") -> httpx.AsyncClient:
    transport = httpx.ASGITransport(app=create_app(container), client=(host, 50000))
    return httpx.AsyncClient(transport=transport, base_url="http://localhost")


def csrf_of(html: str) -> str:
    match = re.search(r'name="csrf" value="([^"]+)"', html)
    assert match, "no CSRF field on the page"
    return match.group(1)


async def sign_in(client: httpx.AsyncClient, role: str) -> str:
    form = await client.get("/console/signin")
    answer = await client.post(
        "/console/signin", data={"csrf": csrf_of(form.text), "token": TOKENS[role], "next": ""}
    )
    assert answer.status_code == 303, answer.text
    return answer.headers["set-cookie"]


def assert_words_not_trace(answer: httpx.Response, status: int, words: str) -> None:
    assert answer.status_code == status, (answer.status_code, answer.text[:500])
    assert answer.headers["content-type"].startswith("text/html")
    assert words in answer.text, answer.text[:2000]
    assert "Traceback" not in answer.text and 'File "' not in answer.text


async def test_pages_need_a_sign_in_and_the_cookie_is_httponly_strict_and_expiring(
    admin_container,
):
    async with console_client(admin_container, host="10.1.2.3") as client:
        answer = await client.get("/console/rules")
        assert answer.status_code == 303
        assert answer.headers["location"] == "/console/signin?next=%2Fconsole%2Frules"
        refused = await client.post("/console/rules/1/activate", data={"csrf": "x"})
        assert_words_not_trace(refused, 401, "Sign in again")
        cookie = await sign_in(client, "viewer")
        assert re.search(r"(?i)httponly", cookie) and re.search(r"(?i)samesite=strict", cookie)
        assert "Max-Age=28800" in cookie and "path=/console" in cookie.lower()
        rules = await client.get("/console/rules")
        assert rules.status_code == 200 and "Rule sets" in rules.text
        assert "Activate" not in rules.text and "Write a new version" not in rules.text
        assert rules.headers["content-security-policy"].startswith("default-src 'self'")
        assert re.fullmatch(r"app;dur=[0-9.]+", rules.headers["server-timing"])


async def test_a_viewer_is_refused_every_admin_action_even_with_a_valid_csrf_token(
    admin_container,
):
    async with console_client(admin_container) as client:
        await sign_in(client, "viewer")
        csrf = csrf_of((await client.get("/console/rules/1")).text)
        for path, data in [
            ("/console/rules/1/activate", {}),
            ("/console/rules/1/impact", {"days": "30"}),
            ("/console/rules", {"document": "name: x"}),
        ]:
            answer = await client.post(path, data={"csrf": csrf, **data})
            assert_words_not_trace(answer, 403, "viewer role")
        answer = await client.post(
            "/console/rules/validate", content=b"name: x", headers={"x-csrf-token": csrf}
        )
        assert_words_not_trace(answer, 403, "viewer role")
        # Viewers may simulate (the API lets them): nothing is stored.
        answer = await client.post(
            "/console/rules/1/simulate",
            data={"csrf": csrf, "journey": "Job seeker with a personal address"},
        )
        assert answer.status_code == 200 and "sample-candidate" in answer.text
    async with client_for(admin_container, "viewer") as api:
        assert (await api.get("/v1/rulesets/active")).json()["version"] == 1


async def test_forms_without_the_sessions_csrf_token_are_refused(admin_container):
    async with console_client(admin_container) as client:
        await sign_in(client, "admin")
        for data in ({}, {"csrf": "forged"}):
            answer = await client.post("/console/rules/1/activate", data=data)
            assert_words_not_trace(answer, 403, "did not come from this console")
        answer = await client.post("/console/rules/validate", content=b"name: x")
        assert answer.status_code == 403
        signin = await client.post("/console/signin", data={"token": TOKENS["admin"]})
        assert_words_not_trace(signin, 403, "did not come from this console")


async def test_without_tokens_loopback_needs_no_sign_in_and_others_are_refused(settings):
    from services.adapters.postgres import db, rule_set_store
    from services.runtime.bootstrap import bootstrap

    container = bootstrap(settings)  # no API tokens configured
    await db.migrate(container.db)
    async with container.db.connect() as conn:
        await rule_set_store.ensure_starter(await db.driver(conn))
    try:
        async with console_client(container) as local:
            answer = await local.get("/console/rules")
            assert answer.status_code == 200 and "Write a new version" in answer.text
            assert "Sign out" not in answer.text
        async with console_client(container, host="192.0.2.7") as remote:
            assert (await remote.get("/console/rules")).status_code == 303
            form = await remote.get("/console/signin")
            answer = await remote.post(
                "/console/signin", data={"csrf": csrf_of(form.text), "token": "anything"}
            )
            assert_words_not_trace(answer, 401, "only trusts its own machine")
    finally:
        await container.close()


async def test_the_editor_publishes_valid_rules_and_locates_the_problems_of_invalid_ones(
    admin_container,
):
    async with console_client(admin_container) as client:
        await sign_in(client, "admin")
        editor = await client.get("/console/rules/new")
        text = re.search(r'name="document"[^>]*>(.*?)</textarea>', editor.text, re.S).group(1)
        import html

        text = html.unescape(text)
        csrf = csrf_of(editor.text)
        # The editor holds the starter file as written: the pricing rule on its own line.
        pricing = 'path: "/pricing*"}, points: 15,'
        assert pricing in text
        wrong = text.replace(pricing, 'path: "/pricing*"}, points: lots,', 1)
        line = next(n for n, row in enumerate(wrong.splitlines(), 1) if "points: lots" in row)
        checked = await client.post(
            "/console/rules/validate", content=wrong.encode(), headers={"x-csrf-token": csrf}
        )
        assert checked.json()["valid"] is False
        assert [p["line"] for p in checked.json()["problems"]] == [line]
        refused = await client.post(
            "/console/rules", data={"csrf": csrf, "document": wrong, "comment": "x"}
        )
        assert_words_not_trace(refused, 422, f"Line {line}:")
        published = await client.post(
            "/console/rules",
            data={
                "csrf": csrf,
                "document": text.replace(pricing, 'path: "/pricing*"}, points: 20,', 1),
                "comment": "<b>pricing</b> up",
            },
        )
        assert published.status_code == 303 and published.headers["location"].startswith(
            "/console/rules/2?"
        )
        page = await client.get("/console/rules")
        assert "&lt;b&gt;pricing&lt;/b&gt; up" in page.text and "<b>pricing" not in page.text
    async with client_for(admin_container, "admin") as api:
        stored = (await api.get("/v1/rulesets/2")).json()
        assert stored["published_by"] == "admin-user" and stored["comment"] == "<b>pricing</b> up"
        rule = next(r for r in stored["document"]["rules"] if r["id"] == "pricing-page")
        assert rule["points"] == 20


@pytest.mark.parametrize(
    ("method", "path", "data", "status", "words"),
    [
        ("GET", "/console/leads/%3Cscript%3Ealert(1)%3C%2Fscript%3E", None, 404, "&lt;script&gt;"),
        ("GET", "/console/leads?cursor=not-a-cursor!!", None, 400, "cursor"),
        ("GET", "/console/leads?stage=nonsense", None, 400, "stage"),
        ("GET", "/console/rules/0", None, 400, "version"),
        ("GET", "/console/rules/99999", None, 404, "no rule-set version 99999"),
        ("GET", "/console/rules/1/diff?against=abc", None, 400, "against"),
        ("GET", "/console/jobs/nope", None, 404, "no job"),
        ("GET", "/console/pipeline?days=3", None, 400, "days"),
        ("GET", "/console/journey?days=3", None, 400, "days"),
        ("GET", "/console/leads?phase=%3Cscript%3E", None, 400, "phase"),
        ("GET", "/console/accounts/nobody", None, 404, "no account"),
        ("GET", "/console/no/such/page", None, 404, "no such page"),
        ("POST", "/console/rules/1/simulate", {"events": "{not json"}, 422, "Line 1 is not JSON"),
        ("POST", "/console/rules/1/simulate", {"events": "[1, 2]"}, 422, "not a JSON object"),
        ("POST", "/console/rules/1/simulate", {"journey": "unknown"}, 422, "Pick a journey"),
        ("POST", "/console/rules/1/impact", {"days": "abc"}, 422, "Days must be a number"),
        ("POST", "/console/rules/1/impact", {"days": "1e9"}, 422, "Days must be a number"),
        ("POST", "/console/rules", {"document": "a: &x [1]\nb: *x"}, 422, "anchors"),
        ("POST", "/console/rules", {"document": "\x00"}, 422, "problem"),
    ],
)
async def test_wrong_or_hostile_input_gets_a_page_in_words(
    admin_container, method, path, data, status, words
):
    async with console_client(admin_container) as client:
        await sign_in(client, "admin")
        if data is not None:
            data = {"csrf": csrf_of((await client.get("/console/rules")).text), **data}
        answer = await client.request(method, path, data=data)
        assert_words_not_trace(answer, status, words)


async def test_validation_of_oversized_or_undecodable_documents_answers_with_problems(
    admin_container,
):
    async with console_client(admin_container) as client:
        await sign_in(client, "admin")
        csrf = csrf_of((await client.get("/console/rules")).text)
        big = await client.post(
            "/console/rules/validate", content=b"a" * 1_100_000, headers={"x-csrf-token": csrf}
        )
        assert big.status_code == 413  # the request limit, before any parsing
        odd = await client.post(
            "/console/rules/validate", content=b"\xff\xfe name: x", headers={"x-csrf-token": csrf}
        )
        assert odd.status_code == 200 and odd.json()["valid"] is False


async def test_the_console_address_and_a_rescoring_jobs_page(admin_container):
    async with console_client(admin_container) as client:
        await sign_in(client, "admin")
        answer = await client.get("/console", follow_redirects=True)
        assert answer.status_code == 200 and str(answer.url).endswith("/console/leads")
        async with client_for(admin_container, "admin") as api:
            started = await api.post("/v1/rulesets/1/activate", params={"rescore": "true"})
            job = started.json()["rescore_job"]

            async def finished() -> bool:
                return (await api.get(f"/v1/jobs/{job}")).json()["status"] != "running"

            await wait_for(finished, what="re-scoring job")
        page = await client.get(f"/console/jobs/{job}")
        assert page.status_code == 200 and "leads re-scored" in page.text, page.text[-2000:]


async def test_with_the_database_away_pages_say_so_and_come_back(settings):
    """The database stops answering (here: its address refuses connections), then returns."""
    from pydantic import SecretStr

    from services.adapters.postgres import db, rule_set_store
    from services.runtime.bootstrap import bootstrap
    from services.runtime.embedded import free_port

    away = settings.model_copy(
        update={"database_url": SecretStr(f"postgresql://nobody@127.0.0.1:{free_port()}/x")}
    )
    container = bootstrap(away)
    try:
        async with console_client(container) as client:
            for path in (
                "/console/leads",
                "/console/rules",
                "/console/pipeline",
                "/console/journey",
            ):
                assert_words_not_trace(await client.get(path), 503, "database is unavailable")
    finally:
        await container.close()
    container = bootstrap(settings)
    await db.migrate(container.db)
    async with container.db.connect() as conn:
        await rule_set_store.ensure_starter(await db.driver(conn))
    try:
        async with console_client(container) as client:
            assert (await client.get("/console/rules")).status_code == 200
    finally:
        await container.close()


async def test_a_challenger_started_compared_and_stopped_from_the_console(admin_container):
    from tests.integration.test_admin_api import with_rule_points

    async with client_for(admin_container, "admin") as api:
        version = (await api.post("/v1/rulesets", json=with_rule_points("blog", 9))).json()[
            "version"
        ]
    async with console_client(admin_container) as client:
        await sign_in(client, "admin")
        page = await client.get(f"/console/rules/{version}")
        assert f"Make version {version} the challenger" in page.text
        started = await client.post(
            f"/console/rules/{version}/challenge", data={"csrf": csrf_of(page.text)}
        )
        assert started.status_code == 303
        rules = await client.get(started.headers["location"])
        assert f'Challenger: <a href="/console/rules/{version}">version {version}</a>' in rules.text
        assert "publishes nothing" in rules.text  # the notice
        # One at a time: a second one is refused in words.
        again = await client.post("/console/rules/1/challenge", data={"csrf": csrf_of(rules.text)})
        assert_words_not_trace(again, 409, "is the active version")
        pipeline = await client.get("/console/pipeline")
        assert pipeline.status_code == 200 and 'id="review-challenger"' in pipeline.text
        assert "(challenger)</th>" in pipeline.text
        stopped = await client.post(
            f"/console/rules/{version}/challenge",
            data={"csrf": csrf_of(rules.text), "stop": "1"},
        )
        assert stopped.status_code == 303
        assert "No challenger" in (await client.get("/console/rules")).text
        # Too few outcomes to propose anything: said in words.
        refused = await client.post(
            "/console/rules/1/propose",
            data={"csrf": csrf_of(rules.text), "days": "30", "target": "won"},
        )
        assert_words_not_trace(refused, 422, "0 decided leads")
        wrong = await client.post(
            "/console/rules/1/propose",
            data={"csrf": csrf_of(rules.text), "days": "30", "target": "maybe"},
        )
        assert_words_not_trace(wrong, 422, "won or qualified")
    async with console_client(admin_container) as viewer:
        await sign_in(viewer, "viewer")
        csrf = csrf_of((await viewer.get("/console/rules/1")).text)
        for path in (f"/console/rules/{version}/challenge", "/console/rules/1/propose"):
            answer = await viewer.post(path, data={"csrf": csrf, "days": "30", "target": "won"})
            assert_words_not_trace(answer, 403, "viewer role")


async def test_the_version_page_and_the_editor_show_the_rules_as_their_author_wrote_them(
    admin_container,
):
    import html

    from scoring_service.rule_set_files import starter_text

    comment = next(line for line in starter_text().splitlines() if line.startswith("# "))
    async with console_client(admin_container) as client:
        await sign_in(client, "admin")
        page = (await client.get("/console/rules/1")).text
        editor = (await client.get("/console/rules/new?start=1")).text
    assert comment in html.unescape(page) and comment in html.unescape(editor)


async def test_dead_letters_are_shown_escaped_and_sent_again_once_fixed(service, settings):
    from tests.helpers.database import drained
    from tests.helpers.kafka import produce, read_all

    stray = {"type": "track", "messageId": "dl-1", "event": "<b>Demo</b>"}
    await produce(settings, [stray])
    await read_all(settings, settings.topic_dlq, expect=1)
    async with console_client(service.container) as client:
        listing = await client.get("/console/dead-letters?reason=missing_identity")
        assert listing.status_code == 200, listing.text
        at = re.search(r'/console/dead-letters/(\d+:\d+)"', listing.text).group(1)
        assert "neither userId nor anonymousId" in listing.text
        none = await client.get("/console/dead-letters?reason=too_large")
        assert "No dead letters for that" in none.text
        # Far-off times are answered, not a 500: before 1970 reads from the beginning.
        for since in ("0001-01-01T00:00:00+00:00", "9999-12-31T00:00:00+00:00"):
            far = await client.get("/console/dead-letters", params={"since": since})
            assert far.status_code == 200, (since, far.text)
        assert at in (await client.get("/console/dead-letters?since=0001-01-01")).text
        page = await client.get(f"/console/dead-letters/{at}")
        assert "&lt;b&gt;Demo&lt;/b&gt;" in page.text and "<b>Demo" not in page.text
        csrf = csrf_of(page.text)
        refused = await client.post(
            f"/console/dead-letters/{at}/resend", data={"csrf": csrf, "event": ""}
        )
        assert refused.status_code == 422 and "still refused" in refused.text
        fixed = '{"type": "track", "messageId": "dl-1", "userId": "u-dl", "event": "x"}'
        sent = await client.post(
            f"/console/dead-letters/{at}/resend", data={"csrf": csrf, "event": fixed}
        )
        assert sent.status_code == 303
        assert "Sent" in (await client.get(sent.headers["location"])).text
        missing = await client.get("/console/dead-letters/0:99999")
        assert missing.status_code == 404
    await wait_for(lambda: drained(settings, 2), what="the fixed event scored")
