"""The web console in a real browser: Debian's Chromium driven by Playwright, against the
service's own HTTP server (real broker, real database, leads scored from a real stream).

Every page visited is checked with axe-core (no serious or critical violations) and saved as
a screenshot (LEADSCORE_SCREENSHOTS, by default .leadscore/screenshots; the console guide shows a
set of them from docs/console).
"""

from __future__ import annotations

import asyncio
import os
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
import uvicorn
from axe_playwright_python.async_playwright import Axe
from playwright.async_api import Browser, Page, async_playwright, expect

from bench.workload import generate, lead_key
from services.http import create_app
from services.runtime.bootstrap import bootstrap
from services.runtime.embedded import free_port
from services.runtime.main import QuietServer
from tests.helpers.database import drained
from tests.helpers.infra import Infra, fresh_settings
from tests.helpers.kafka import produce
from tests.helpers.service import TOKENS, RunningService, token_settings
from tests.helpers.waiting import wait_for

ROOT = Path(__file__).resolve().parents[2]
CHROMIUM = os.environ.get("LEADSCORE_CHROMIUM", "/usr/bin/chromium")
# As checked on this kind of machine: no sandbox as root, and no calls to Google's services
# (the network is closed; without these flags Chromium keeps retrying them).
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
SCREENSHOTS = Path(os.environ.get("LEADSCORE_SCREENSHOTS", ROOT / ".leadscore" / "screenshots"))
EVENTS, LEADS = 3_000, 300


@dataclass
class Console:
    url: str
    browser: Browser
    axe: Axe
    violations: dict[str, list[str]]
    foreign: list[str]

    async def check(self, page: Page, name: str) -> None:
        """Screenshot the page, and record axe-core's serious and critical findings."""
        await page.screenshot(path=SCREENSHOTS / f"{name}.png", full_page=True)
        results = await self.axe.run(page)
        found = [
            f"{v['id']} ({v['impact']}): {v['help']} at "
            + ", ".join(str(node["target"]) for node in v["nodes"][:3])
            for v in results.response["violations"]
            if v["impact"] in ("serious", "critical")
        ]
        self.violations[name] = found


def prepare() -> None:
    if not Path(CHROMIUM).exists():
        pytest.fail(f"no Chromium at {CHROMIUM}: `make tools` installs Debian's chromium")
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def console(infra: Infra) -> AsyncIterator[Console]:
    """A scored stream behind a running service, its HTTP server, and a browser."""
    prepare()
    settings = token_settings(await fresh_settings(infra))
    service = await RunningService(bootstrap(settings)).start()
    docs = list(generate(events=EVENTS, leads=LEADS, seed=3, recent=True, days=20))
    await produce(settings, docs, key=lead_key)
    await wait_for(lambda: drained(settings, len(docs)), timeout=120, what="stream scored")
    port = free_port()
    server = QuietServer(
        uvicorn.Config(
            create_app(service.container),
            host="127.0.0.1",
            port=port,
            log_level="warning",
            lifespan="off",
        )
    )
    serving = asyncio.create_task(server.serve())
    await wait_for(lambda: server.started, what="HTTP server")
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield Console(f"http://127.0.0.1:{port}/console", browser, Axe(), {}, [])
        finally:
            await browser.close()
            server.should_exit = True
            await serving
            await service.close()


async def signed_in(console: Console, role: str, **device: Any) -> Page:
    context = await console.browser.new_context(
        **(device or {"viewport": {"width": 1280, "height": 900}})
    )
    page = await context.new_page()
    # Offline: every request the pages make goes to the service itself.
    origin = console.url.removesuffix("/console")
    page.on(
        "request",
        lambda request: (
            console.foreign.append(request.url) if not request.url.startswith(origin) else None
        ),
    )
    await page.goto(f"{console.url}/leads")
    await expect(page).to_have_url(re.compile(r"/console/signin"))  # sent to sign in first
    await page.get_by_label("API token").fill(TOKENS[role])
    await page.get_by_role("button", name="Sign in").click()
    await expect(page).to_have_url(re.compile(r"/console/leads$"))
    return page


def number(text: str) -> float:
    return float(text.replace(",", "").strip())


async def test_an_admin_edits_publishes_compares_simulates_activates_and_rolls_back(
    console: Console,
) -> None:
    page = await signed_in(console, "admin")
    cookie = next(c for c in await page.context.cookies() if c["name"] == "leadscore_console")
    assert cookie["httpOnly"] and cookie["sameSite"] == "Strict" and cookie["expires"] > 0
    await console.check(page, "leads")

    # A lead's score explained: the contributions shown add up to the total shown.
    await page.locator("table tbody tr td a").first.click()
    await expect(page.get_by_role("heading", name="Why this score")).to_be_visible()
    total = number(await page.locator("#score-total").inner_text())
    shown = [
        number(t) for t in await page.locator("#contributions td.contribution").all_inner_texts()
    ]
    assert shown and abs(sum(shown) - total) < 0.005, (shown, total)
    assert number(await page.locator("#contribution-sum").inner_text()) == total
    await console.check(page, "lead")

    # Filtered by stage: a lead handed to sales shows its open follow-up deadline.
    await page.goto(f"{console.url}/leads")
    await page.get_by_label("Stage").select_option("sal")
    await page.get_by_role("button", name="Show").click()
    await expect(page.locator("table caption")).to_contain_text("in sal")
    stages = await page.locator("table tbody tr td:nth-child(2)").all_inner_texts()
    assert stages and set(stages) == {"sal"}
    await page.locator("table tbody tr td a").first.click()
    await expect(page.locator(".facts")).to_contain_text("owes a response for sal by")

    # The editor: a wrong value is reported at its line while typing, and nothing publishes.
    await page.get_by_role("link", name="Rules").click()
    await console.check(page, "rules")
    await page.get_by_role("link", name="Write a new version").click()
    editor = page.get_by_label("Rule set (YAML)")
    text = await editor.input_value()
    # The editor holds the starter file as its authors wrote it, comments and all.
    assert "# " in text
    pricing = 'path: "/pricing*"}, points: 15,'
    wrong = text.replace(pricing, 'path: "/pricing*"}, points: lots,', 1)
    bad_line = next(n for n, line in enumerate(wrong.splitlines(), 1) if "points: lots" in line)
    await editor.fill(wrong)
    problem = page.locator("#validation li").first
    await expect(problem).to_contain_text("points")
    where = int(re.search(r"Line (\d+)", await problem.inner_text()).group(1))
    assert where == bad_line
    await expect(page.locator("#gutter li.bad")).to_have_text(str(where))
    # The problem's button takes the cursor to its line.
    await problem.get_by_role("button", name=f"Line {where}").click()
    cursor_line = await editor.evaluate(
        "el => el.value.slice(0, el.selectionStart).split('\\n').length"
    )
    assert cursor_line == where
    await console.check(page, "editor-problem")

    # Fixed: valid as typed, then published as version 2 with the reason kept.
    await editor.fill(text.replace(pricing, 'path: "/pricing*"}, points: 40,', 1))
    await expect(page.locator("#validation")).to_contain_text("Valid")
    await page.get_by_label("Why this version").fill("pricing page worth more")
    await page.get_by_role("button", name="Publish").click()
    await expect(page.get_by_role("heading", level=1)).to_contain_text("Version 2")
    await expect(page.get_by_role("status")).to_contain_text("Published version 2")
    await console.check(page, "version")

    # The diff: side by side, the changed line facing its old self.
    await page.get_by_role("link", name="Compare with the active version").click()
    changed = page.locator("table.diff tr.changed")
    await expect(changed).to_have_count(1)
    await expect(changed.locator("td.old")).to_contain_text("points: 15,")
    await expect(changed.locator("td.new")).to_contain_text("points: 40,")
    await expect(page.locator("ul.changes")).to_contain_text("pricing-page.points")
    await console.check(page, "diff")

    # A simulation of a sample journey: the trajectory chart and the transitions.
    await page.go_back()
    await page.get_by_role("button", name="Simulate").click()
    await expect(page.locator("svg.chart").first).to_be_visible()
    await expect(page.locator("main")).to_contain_text("lead → mql")
    markers = await page.locator("svg.chart circle").count()
    assert markers == 4  # one point per event of the journey
    await console.check(page, "simulation")

    # An impact report, followed to its charts.
    await page.go_back()
    await page.get_by_role("button", name="Start the impact report").click()
    await expect(page.locator("#job-done")).to_be_visible(timeout=60_000)
    await expect(
        page.get_by_role("heading", name="Leads per stage under each version")
    ).to_be_visible()
    await expect(page.locator("svg.chart")).to_have_count(2)
    await console.check(page, "impact")

    # Activate version 2, then roll back to version 1.
    await page.goto(f"{console.url}/rules/2")
    await page.get_by_role("button", name="Activate version 2").click()
    await expect(page.get_by_role("status")).to_contain_text("Activated version 2")
    await expect(page.locator("tbody tr").first).to_contain_text("active")
    await page.get_by_role("button", name="Roll back to version 1").click()
    await expect(page.get_by_role("status")).to_contain_text("Rolled back to version 1")
    await expect(page.locator("tbody tr").nth(1)).to_contain_text("active")

    # The pipeline and the accounts.
    await page.get_by_role("link", name="Pipeline").click()
    await expect(page.locator("svg.chart").first).to_be_visible()
    await console.check(page, "pipeline")
    # The buyer journey: the scored stream placed leads in phases; a phase links its leads.
    await page.get_by_role("link", name="Journey", exact=True).click()
    await expect(page.get_by_role("heading", name="Buyer journey")).to_be_visible()
    await expect(page.locator("#journey-phases tbody tr")).to_have_count(7)
    await console.check(page, "journey")
    await page.locator("#journey-phases tbody tr td a").nth(2).click()
    await expect(page.locator("caption").first).to_contain_text("consideration")
    await page.get_by_role("link", name="Accounts").click()
    await console.check(page, "accounts")
    await page.locator("table tbody tr td a").first.click()
    await expect(page.get_by_role("heading", name="Buying committee")).to_be_visible()
    await console.check(page, "account")

    # A webhook made in the console: its secret shown once, then its page and log.
    await page.get_by_role("link", name="Webhooks").click()
    await page.get_by_label("Name").fill("Slack bot")
    await page.get_by_label("URL (https)").fill("https://hooks.example.com/leadscore")
    await page.get_by_role("button", name="Make the webhook").click()
    await expect(page.get_by_role("status")).to_contain_text("whsec_")
    await console.check(page, "webhooks")
    await page.get_by_role("link", name="Slack bot").click()
    await expect(page.get_by_role("heading", name="Slack bot")).to_be_visible()
    await console.check(page, "webhook")

    # Errors are words on a page: an unknown lead, a value the page cannot use.
    response = await page.goto(f"{console.url}/leads/no-such-lead")
    assert response is not None and response.status == 404
    await expect(page.get_by_role("alert")).to_contain_text("no lead")
    response = await page.goto(f"{console.url}/leads?stage=nonsense")
    assert response is not None and response.status == 400
    assert "Traceback" not in await page.content()
    await page.context.close()


async def test_a_viewer_sees_no_admin_controls_and_is_refused_anyway(console: Console) -> None:
    page = await signed_in(console, "viewer")
    # The first Tab reaches "Skip to content", which moves on to the page's main part.
    await page.keyboard.press("Tab")
    assert await page.evaluate("document.activeElement.textContent") == "Skip to content"
    await page.keyboard.press("Enter")
    await expect(page).to_have_url(re.compile(r"#main$"))
    await page.get_by_role("link", name="Rules").click()
    await expect(page.get_by_role("heading", name="Rule sets")).to_be_visible()
    for name in ("Write a new version", "Activate", "Roll back"):
        await expect(page.get_by_text(name, exact=False)).to_have_count(0)
    await page.goto(f"{console.url}/rules/1")
    await expect(page.get_by_role("button", name=re.compile("Activate|impact"))).to_have_count(0)
    await console.check(page, "viewer-version")

    # Posting anyway, with the session's own CSRF token: refused.
    csrf = await page.locator("input[name=csrf]").first.get_attribute("value")
    answer = await page.request.post(
        f"{console.url}/rules/1/activate", form={"csrf": csrf or ""}, max_redirects=0
    )
    assert answer.status == 403 and "viewer" in await answer.text()
    answer = await page.request.get(f"{console.url}/rules/new", max_redirects=0)
    assert answer.status == 403
    await page.context.close()


async def test_forms_need_the_sessions_csrf_token_and_sign_out_ends_the_session(
    console: Console,
) -> None:
    page = await signed_in(console, "admin")
    answer = await page.request.post(
        f"{console.url}/rules/1/activate", form={"csrf": "forged"}, max_redirects=0
    )
    assert answer.status == 403 and "expired or did not come from this console" in (
        await answer.text()
    )
    copied = [c for c in await page.context.cookies() if c["name"] == "leadscore_console"]
    assert copied, "no session cookie"
    await page.get_by_role("button", name="Sign out").click()
    await expect(page).to_have_url(re.compile(r"/console/signin"))
    await page.goto(f"{console.url}/rules")
    await expect(page).to_have_url(re.compile(r"/console/signin"))
    # The cookie copied before sign-out, presented by another browser: refused too.
    elsewhere = await console.browser.new_context()
    await elsewhere.add_cookies(copied)  # type: ignore[arg-type]
    replay = await elsewhere.new_page()
    await replay.goto(f"{console.url}/rules")
    await expect(replay).to_have_url(re.compile(r"/console/signin"))
    await elsewhere.close()
    # By keyboard alone: the token field, Enter to send.
    await page.get_by_label("API token").focus()
    await page.keyboard.type("not-a-token")
    await page.keyboard.press("Enter")
    await expect(page.get_by_role("alert")).to_contain_text("not one this service knows")
    await console.check(page, "signin")
    await page.context.close()


async def test_on_a_phone_the_pages_fit_the_screen(console: Console) -> None:
    page = await signed_in(
        console,
        "viewer",
        viewport={"width": 390, "height": 844},
        device_scale_factor=2,
        is_mobile=True,
        has_touch=True,
    )
    for name, path in [("phone-leads", "/leads"), ("phone-pipeline", "/pipeline")]:
        await page.goto(f"{console.url}{path}")
        # Wide tables scroll inside their own box; the page itself never scrolls sideways.
        overflow = await page.evaluate(
            "document.documentElement.scrollWidth - document.documentElement.clientWidth"
        )
        assert overflow <= 0, (name, overflow)
        await console.check(page, name)
    await page.goto(f"{console.url}/leads")
    await page.locator("table tbody tr td a").first.click()
    await expect(page.get_by_role("heading", name="Why this score")).to_be_visible()
    await console.check(page, "phone-lead")
    await page.context.close()


async def test_every_page_visited_has_no_serious_accessibility_violation(console: Any) -> None:
    """Runs after the journeys above (pytest keeps file order) and reads what they found."""
    assert len(console.violations) >= 15, sorted(console.violations)
    assert {name: found for name, found in console.violations.items() if found} == {}
    assert console.foreign == []  # nothing was loaded from anywhere but the service


# In the page: every box whose content is wider than itself must be a scroll box (a table
# that scrolls sideways inside its card is fine; one clipped or spilling out is not), and no
# two labels of one chart may cover each other.
LAYOUT_PROBLEMS = """(wide) => {
  const problems = [];
  const root = document.documentElement;
  if (root.scrollWidth > root.clientWidth + 1) {
    problems.push(`the page scrolls sideways by ${root.scrollWidth - root.clientWidth}px`);
  }
  const name = (el) => el.tagName.toLowerCase() + (el.id ? '#' + el.id : '') +
    (el.className && typeof el.className === 'string' ? '.' + el.className.split(' ')[0] : '');
  for (const el of document.querySelectorAll('main *')) {
    if (!(el instanceof HTMLElement) || el.clientWidth === 0) continue;
    const style = getComputedStyle(el);
    if (style.display === 'inline' || el.closest('svg')) continue;
    if (el.tagName === 'TEXTAREA' || el.tagName === 'PRE') continue;  // the author's lines
    const scrolls = ['auto', 'scroll'].includes(style.overflowX);
    // On a wide screen nothing needs to scroll sideways; on a phone a wide table may, in
    // its own box, but nothing may be cut off or spill out of its box.
    if (el.scrollWidth > el.clientWidth + 1 && (wide || !scrolls)) {
      problems.push(
        `${name(el)} holds ${el.scrollWidth}px in ${el.clientWidth}px (${style.overflowX})`);
    }
  }
  for (const link of document.querySelectorAll('main td:first-child > a')) {
    if (link.getClientRects().length > 1) problems.push(`the id "${link.textContent}" wraps`);
  }
  for (const svg of document.querySelectorAll('main svg.chart')) {
    const scale = svg.getBoundingClientRect().width / svg.viewBox.baseVal.width;
    for (const text of svg.querySelectorAll('text')) {
      const size = parseFloat(getComputedStyle(text).fontSize) * scale;
      if (wide && size < 11) {
        problems.push(`chart label "${text.textContent}" is ${size.toFixed(1)}px`);
        break;
      }
    }
  }
  for (const svg of document.querySelectorAll('main svg')) {
    const boxes = [...svg.querySelectorAll('text')].map(t => [t, t.getBoundingClientRect()])
      .filter(([, b]) => b.width > 0);
    const frame = svg.getBoundingClientRect();
    for (const [t, b] of boxes) {
      if (b.left < frame.left - 1 || b.right > frame.right + 1) {
        problems.push(`chart label "${t.textContent}" is cut off at the chart's edge`);
      }
    }
    for (let i = 0; i < boxes.length; i++) {
      for (let j = i + 1; j < boxes.length; j++) {
        const [a, r] = boxes[i], [b, s] = boxes[j];
        const w = Math.min(r.right, s.right) - Math.max(r.left, s.left);
        const h = Math.min(r.bottom, s.bottom) - Math.max(r.top, s.top);
        if (w > 1 && h > 1) {
          problems.push(`chart labels "${a.textContent}" and "${b.textContent}" overlap`);
        }
      }
    }
  }
  return problems;
}"""


@pytest.mark.parametrize(
    "device",
    [
        {"viewport": {"width": 1400, "height": 900}},
        {
            "viewport": {"width": 390, "height": 844},
            "device_scale_factor": 2,
            "is_mobile": True,
            "has_touch": True,
        },
    ],
    ids=["desktop", "phone"],
)
async def test_every_page_holds_its_layout(console: Console, device: dict[str, Any]) -> None:
    page = await signed_in(console, "admin", **device)
    await page.goto(f"{console.url}/leads")
    lead = await page.locator("table tbody tr td a").first.get_attribute("href")
    await page.goto(f"{console.url}/accounts")
    account = await page.locator("table tbody tr td a").first.get_attribute("href")
    paths = [
        "/leads",
        lead,
        "/accounts",
        account,
        "/pipeline",
        "/journey",
        "/rules",
        "/rules/1",
        "/rules/new",
        "/rules/1/diff?against=1",
        "/webhooks",
        "/sessions",
        "/dead-letters",
    ]
    found = {}
    for path in paths:
        origin = console.url.removesuffix("/console")
        url = f"{origin}{path}" if path.startswith("/console") else f"{console.url}{path}"
        response = await page.goto(url)
        assert response is not None and response.status == 200, path
        problems = await page.evaluate(LAYOUT_PROBLEMS, device["viewport"]["width"] >= 1000)
        if problems:
            found[path] = problems
    await page.context.close()
    assert found == {}
