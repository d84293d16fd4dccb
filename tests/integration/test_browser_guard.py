"""With no tokens configured the API trusts loopback callers, and a browser on that machine is
one for every page it shows: other sites' pages must not write through it, and a
DNS-rebinding name must not reach it at all. Token-bearing calls and the console's own forms
still work."""

from __future__ import annotations

from pathlib import Path

import httpx

from services.app.container import Container
from services.http import create_app
from services.runtime.bootstrap import bootstrap
from tests.helpers.database import db_fetch
from tests.helpers.service import client_for
from tests.integration.test_console import csrf_of

STARTER = (Path(__file__).parents[2] / "scoring_service" / "starter_ruleset.yaml").read_bytes()


def local(container: Container, base_url: str = "http://127.0.0.1:8000") -> httpx.AsyncClient:
    transport = httpx.ASGITransport(app=create_app(container), client=("127.0.0.1", 50000))
    return httpx.AsyncClient(transport=transport, base_url=base_url)


async def versions(container: Container) -> int:
    rows = await db_fetch(container.settings, "SELECT count(*) AS n FROM rulesets")
    return int(rows[0]["n"])


async def test_other_sites_pages_cannot_publish_or_activate_through_the_trusted_loopback(
    open_container,
):
    async with local(open_container) as api:
        # What the probe did: a cross-origin text/plain publish, then an activation.
        planted = await api.post(
            "/v1/rulesets?comment=planted",
            content=STARTER,
            headers={"origin": "http://evil.example", "content-type": "text/plain"},
        )
        assert planted.status_code == 403, planted.text
        assert planted.json()["error"] == "cross_origin_refused"
        activated = await api.post(
            "/v1/rulesets/1/activate", headers={"origin": "http://evil.example"}
        )
        assert activated.status_code == 403
        # Another port of the same machine is another origin; so is a sandboxed page.
        for origin in ("http://127.0.0.1:9000", "null"):
            answer = await api.post("/v1/rulesets/1/activate", headers={"origin": origin})
            assert answer.status_code == 403, origin
        fetched = await api.post("/v1/rulesets/1/activate", headers={"sec-fetch-site": "same-site"})
        assert fetched.status_code == 403
        # A browser that names no origin still cannot send a form or text/plain body.
        for content_type in ("text/plain", "application/x-www-form-urlencoded"):
            answer = await api.post(
                "/v1/rulesets", content=STARTER, headers={"content-type": content_type}
            )
            assert answer.status_code == 415, answer.text
            assert "application/yaml" in answer.json()["detail"]
        bodied = await api.post(
            "/v1/rulesets/1/activate", content=b"x", headers={"content-type": "text/plain"}
        )
        assert (bodied.status_code, bodied.json()["detail"]) == (415, "this endpoint takes no body")
        assert await versions(open_container) == 1

        # Programs (no Origin) and the service's own pages (same origin) still write.
        published = await api.post(
            "/v1/rulesets?comment=by+hand",
            content=STARTER,
            headers={"content-type": "application/yaml; charset=utf-8"},
        )
        assert published.status_code == 201, published.text
        same_origin = await api.post(
            f"/v1/rulesets/{published.json()['version']}/activate",
            headers={"origin": "http://127.0.0.1:8000", "sec-fetch-site": "same-origin"},
        )
        assert same_origin.status_code == 200, same_origin.text
        # Reads are not writes: another origin cannot read the answer anyway (no CORS).
        assert (await api.get("/v1/leads", headers={"origin": "http://evil.example"})).is_success
    assert await versions(open_container) == 2


async def test_a_foreign_host_name_is_refused_by_the_api_and_the_console(open_container):
    async with local(open_container, "http://attacker.example:8000") as rebound:
        for path in ("/v1/leads", "/console/rules", "/readyz"):
            answer = await rebound.get(path)
            assert answer.status_code == 421, path
            assert answer.json()["error"] == "unknown_host"
        assert (await rebound.post("/v1/rulesets/1/activate")).status_code == 421
    for base in ("http://localhost:8000", "http://127.0.0.1:8000", "http://[::1]:8000"):
        async with local(open_container, base) as own:
            assert (await own.get("/v1/leads")).status_code == 200, base
    configured = bootstrap(open_container.settings.with_changes(allowed_hosts="scoring.internal"))
    try:
        async with local(configured, "http://scoring.internal") as named:
            assert (await named.get("/v1/leads")).status_code == 200
    finally:
        await configured.close()


async def test_the_open_consoles_own_forms_work_and_other_origins_are_refused(open_container):
    async with local(open_container) as browser:
        page = await browser.get("/console/rules/1")
        assert page.status_code == 200
        csrf = csrf_of(page.text)
        foreign = await browser.post(
            "/console/rules/1/activate",
            data={"csrf": csrf},
            headers={"origin": "http://127.0.0.1:9000"},
        )
        assert foreign.status_code == 403
        own = await browser.post(
            "/console/rules/1/activate",
            data={"csrf": csrf},
            headers={"origin": "http://127.0.0.1:8000", "sec-fetch-site": "same-origin"},
        )
        assert own.status_code == 303, own.text
        # The double-submit token: a form without the cookie's value is refused.
        forged = await browser.post("/console/rules/1/activate", data={"csrf": "guessed"})
        assert forged.status_code == 403


async def test_with_tokens_a_bearer_call_from_any_origin_works_as_before(admin_container):
    async with client_for(admin_container, "admin") as api:
        answer = await api.post(
            "/v1/rulesets?comment=tooling",
            content=STARTER,
            headers={"origin": "http://tools.example", "content-type": "text/plain"},
        )
    assert answer.status_code == 201, answer.text


async def test_the_front_door_leads_to_the_console(open_container):
    async with local(open_container) as api:
        response = await api.get("/")
        assert response.status_code == 307
        assert response.headers["location"] == "/console/"


async def test_a_token_sent_to_a_service_without_tokens_is_answered_with_a_warning(
    open_container, caplog
):
    async with local(open_container) as api:
        with caplog.at_level("WARNING", logger="services.http.app"):
            first = await api.get("/v1/rulesets", headers={"authorization": "Bearer ls_x"})
            second = await api.get("/v1/rulesets", headers={"authorization": "Bearer ls_x"})
        plain = await api.get("/v1/rulesets")
    assert first.status_code == second.status_code == plain.status_code == 200
    assert "no API tokens are configured" in first.headers["warning"]
    assert "warning" in second.headers and "warning" not in plain.headers
    told = [r for r in caplog.records if "bearer token" in r.getMessage()]
    assert len(told) == 1  # once, not once per request
