"""Real tracking SDKs from PyPI (Segment's and RudderStack's Python libraries) as clients of the
Segment-compatible intake, against the service's own HTTP server and a running pipeline: with
no tokens (loopback) and with tokens (the write key is an ingest token sent as HTTP Basic),
with gzip on and off. Every journey they send is scored to SAL."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from rudderstack.analytics import Client as RudderStackClient
from segment.analytics import Client as SegmentClient

from services.runtime.bootstrap import bootstrap
from tests.e2e.test_cli import api_server
from tests.helpers.database import db_fetch
from tests.helpers.infra import Infra, fresh_settings
from tests.helpers.service import TOKENS, RunningService, token_settings
from tests.helpers.waiting import wait_for

SDKS: dict[str, Callable[..., Any]] = {"segment": SegmentClient, "rudderstack": RudderStackClient}


@pytest.fixture
async def open_service(infra: Infra) -> AsyncIterator[tuple[RunningService, str]]:
    async for running in _serve(await fresh_settings(infra)):
        yield running


@pytest.fixture
async def token_service(infra: Infra) -> AsyncIterator[tuple[RunningService, str]]:
    async for running in _serve(token_settings(await fresh_settings(infra))):
        yield running


async def _serve(settings: Any) -> AsyncIterator[tuple[RunningService, str]]:
    running = await RunningService(bootstrap(settings)).start()
    try:
        async with api_server(running.container) as url:
            yield running, url
    finally:
        await running.close()


def send_journey(sdk: str, url: str, write_key: str, *, gzip: bool, user: str) -> list[Any]:
    """A buyer's journey through the SDK as an application would send it; the errors the SDK
    reported (its on_error callback)."""
    errors: list[Any] = []
    client = SDKS[sdk](
        write_key,
        host=url,
        gzip=gzip,
        max_retries=0,
        on_error=lambda error, batch: errors.append(error),
    )
    client.page(user, None, "Pricing", {"path": "/pricing"}, anonymous_id=f"anon-{user}")
    client.identify(
        user,
        {
            "email": f"{user}@trucking-co.com",
            "title": "Owner",
            "company": {"name": "Trucking Co", "industry": "Transportation", "employees": 14},
        },
    )
    client.group(user, f"acct-{user}", {"name": "Trucking Co", "industry": "Transportation"})
    client.page(user, None, "Enterprise", {"url": "https://example.com/pricing/enterprise"})
    client.track(user, "Demo Requested", {"form": "demo-header"})
    client.shutdown()  # sends what is queued and waits for it
    return errors


async def stage_of(service: RunningService, lead_id: str) -> str | None:
    rows = await db_fetch(
        service.container.settings, "SELECT stage, fit FROM leads WHERE lead_id = $1", lead_id
    )
    return rows[0]["stage"] if rows and rows[0]["fit"] > 0 else None


async def test_both_sdks_send_without_tokens_with_and_without_gzip(open_service):
    service, url = open_service
    for sdk in SDKS:
        for gzip in (False, True):
            user = f"{sdk}-{'gzip' if gzip else 'plain'}-open"
            errors = await asyncio.to_thread(
                send_journey, sdk, url, "any-write-key", gzip=gzip, user=user
            )
            assert errors == [], (sdk, gzip, [str(e) for e in errors])
            await wait_for(lambda user=user: _is_sal(service, user), what=f"{user} scored to SAL")


async def test_with_tokens_an_ingest_token_is_the_write_key_and_others_are_told_why(
    token_service,
):
    service, url = token_service
    for sdk in SDKS:
        for key in ("not-a-token", TOKENS["admin"]):
            errors = await asyncio.to_thread(
                send_journey, sdk, url, key, gzip=True, user=f"{sdk}-refused"
            )
            # Each SDK's APIError carries the status, our code and our message.
            assert {(e.status, e.code) for e in errors} == {(401, "unauthorized")}, sdk
            assert {e.message for e in errors} <= {
                "unknown token",
                "HTTP Basic is for ingest tokens; send Bearer <token>",
            }
    assert await db_fetch(service.container.settings, "SELECT lead_id FROM leads") == []
    for sdk in SDKS:
        for gzip in (False, True):
            user = f"{sdk}-{'gzip' if gzip else 'plain'}-token"
            errors = await asyncio.to_thread(
                send_journey, sdk, url, TOKENS["ingest"], gzip=gzip, user=user
            )
            assert errors == [], (sdk, gzip, [str(e) for e in errors])
            await wait_for(lambda user=user: _is_sal(service, user), what=f"{user} scored to SAL")


async def _is_sal(service: RunningService, user: str) -> bool:
    return await stage_of(service, user) == "sal"
