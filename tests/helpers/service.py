"""A running service in the test's process, API tokens for each role, and HTTP clients."""

from __future__ import annotations

import asyncio

import httpx
from pydantic import SecretStr

from services.app.container import Container
from services.settings import Settings
from tests.helpers.waiting import SLA_EPOCH, FakeClock, wait_for


class RunningService:
    """A service instance (consumers, deadline watcher, relay) in the test's event loop."""

    def __init__(self, container: Container, clock: FakeClock | None = None) -> None:
        self.container = container
        self.clock = clock or FakeClock(SLA_EPOCH)
        container.deadlines.clock = self.clock
        self.stop = asyncio.Event()
        self.tasks: list[asyncio.Task[None]] = []

    async def start(self) -> RunningService:
        await self.container.start()
        self.tasks = self.container.run(self.stop)
        await wait_for(lambda: self.container.consumer.assignment(), what="partitions")
        return self

    async def close(self) -> None:
        self.stop.set()
        await asyncio.gather(*self.tasks)
        await self.container.close()


TOKENS = {"admin": "admin-token-1", "viewer": "viewer-token-1", "ingest": "ingest-token-1"}


def token_settings(settings: Settings) -> Settings:
    from services.auth import hash_token

    spec = ",".join(f"{role}-user:{role}:{hash_token(t)}" for role, t in TOKENS.items())
    return settings.model_copy(update={"api_tokens": SecretStr(spec)})


def client_for(
    container: Container, role: str | None = None, host: str = "127.0.0.1"
) -> httpx.AsyncClient:
    """An HTTP client for the real app of `container`, with `role`'s token if given."""
    from services.http import create_app

    headers = {"Authorization": f"Bearer {TOKENS[role]}"} if role else {}
    transport = httpx.ASGITransport(app=create_app(container), client=(host, 50000))
    return httpx.AsyncClient(transport=transport, base_url="http://localhost", headers=headers)
