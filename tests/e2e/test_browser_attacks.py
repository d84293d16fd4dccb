"""Attacks on the trusted-loopback mode (no tokens, `make run`) from a real browser: Chromium
shows a page of another origin (another port of this machine) that writes to the API with
`fetch(..., {mode: "no-cors"})` and a plain form, and a DNS-rebinding name that resolves to
the service. Nothing they send changes anything; the service's own console still works."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import orjson
import pytest_asyncio
from playwright.async_api import async_playwright, expect
from starlette.applications import Starlette
from starlette.responses import HTMLResponse
from starlette.routing import Route

from services.adapters.postgres import db, rule_set_store
from services.http import create_app
from services.runtime.bootstrap import bootstrap
from services.runtime.embedded import free_port
from tests.e2e.test_cli import serving
from tests.e2e.test_console import CHROMIUM, CHROMIUM_ARGS, prepare
from tests.helpers.database import db_fetch
from tests.helpers.infra import Infra, fresh_settings
from tests.helpers.waiting import wait_for

EVIL_PAGE = """<!doctype html><html><body><p id="done">working</p>
<form id="form" method="post" action="{api}/v1/rulesets/2/activate" target="sink"></form>
<iframe name="sink" title="sink"></iframe>
<script>
(async () => {{
  const results = [];
  const attempts = [
    ["{api}/v1/rulesets?comment=planted", {{method: "POST", mode: "no-cors",
      headers: {{"Content-Type": "text/plain"}}, body: {document}}}],
    ["{api}/v1/rulesets/2/activate", {{method: "POST", mode: "no-cors"}}],
    ["{api}/v1/leads/u-1/stage", {{method: "POST", mode: "no-cors",
      headers: {{"Content-Type": "text/plain"}}, body: '{{"stage": "disqualified"}}'}}],
  ];
  for (const [url, init] of attempts) {{
    try {{ await fetch(url, init); results.push("sent"); }}
    catch (e) {{ results.push("failed"); }}
  }}
  document.getElementById("form").submit();
  document.getElementById("done").textContent = "done: " + results.join(",");
}})();
</script></body></html>"""


@pytest_asyncio.fixture(loop_scope="session")
async def open_api(infra: Infra) -> AsyncIterator[tuple[str, object]]:
    """The API with no tokens (loopback trusted), on a real port."""
    prepare()
    settings = await fresh_settings(infra)
    container = bootstrap(settings)
    await db.migrate(container.db)
    async with container.db.connect() as conn:
        await rule_set_store.ensure_starter(await db.driver(conn))
    port = free_port()
    try:
        async with serving(create_app(container), port):
            yield f"http://127.0.0.1:{port}", settings
    finally:
        await container.close()


async def test_another_origins_page_cannot_write_and_a_rebinding_name_cannot_read(open_api):
    api, settings = open_api
    document = orjson.dumps(document_bytes().decode()).decode()
    evil_port = free_port()
    evil = Starlette(
        routes=[
            Route(
                "/",
                lambda _: HTMLResponse(EVIL_PAGE.format(api=api, document=document)),
            )
        ]
    )
    api_port = api.rsplit(":", 1)[1]
    # Two versions published by a program (no Origin, the documented type): the page will try
    # to activate the first, the console activates the second.
    async with httpx.AsyncClient(base_url=api) as program:
        for _ in range(2):
            published = await program.post(
                "/v1/rulesets",
                content=document_bytes(),
                headers={"content-type": "application/yaml"},
            )
            assert published.status_code == 201, published.text
    async with serving(evil, evil_port), async_playwright() as playwright:
        browser = await playwright.chromium.launch(
            executable_path=CHROMIUM,
            # attacker.example resolves to this machine: DNS rebinding, without a DNS server.
            args=[*CHROMIUM_ARGS, "--host-resolver-rules=MAP attacker.example 127.0.0.1"],
        )
        try:
            page = await browser.new_page()
            statuses: list[tuple[str, int]] = []
            page.on(
                "response",
                lambda r: statuses.append((r.url, r.status)) if r.url.startswith(api) else None,
            )
            await page.goto(f"http://127.0.0.1:{evil_port}/")
            await expect(page.locator("#done")).to_have_text(re.compile(r"^done: "))
            await wait_for(lambda: len(statuses) >= 4, what="the browser's four requests")
            # The fetches left (no-cors answers are opaque to the page): the service refused
            # each of them, and the form post too.
            assert {status for _, status in statuses} == {403}, statuses

            rebound = await browser.new_page()
            answer = await rebound.goto(f"http://attacker.example:{api_port}/v1/leads")
            assert answer is not None and answer.status == 421
            console = await rebound.goto(f"http://attacker.example:{api_port}/console/rules")
            assert console is not None and console.status == 421

            # The service's own console, same origin, still activates without a sign-in.
            own = await browser.new_page()
            await own.goto(f"{api}/console/rules/3")
            await own.get_by_role("button", name="Activate version 3").click()
            await expect(own.get_by_role("status")).to_contain_text("version 3")
        finally:
            await browser.close()
    versions = await db_fetch(settings, "SELECT count(*) AS n FROM rulesets")
    assert versions[0]["n"] == 3  # nothing was planted
    leads = await db_fetch(settings, "SELECT count(*) AS n FROM leads")
    assert leads[0]["n"] == 0
    audit = await db_fetch(settings, "SELECT action, target FROM audit_log ORDER BY id")
    assert [tuple(r) for r in audit] == [
        ("ruleset.publish", "2"),
        ("ruleset.publish", "3"),
        ("ruleset.activate", "3"),  # the console's own; version 2 was never activated
    ]


def document_bytes() -> bytes:
    return (Path(__file__).parents[2] / "scoring_service" / "starter_ruleset.yaml").read_bytes()
