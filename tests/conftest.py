"""Shared fixtures: one real embedded PostgreSQL and one real Apache Kafka broker per test
session (Tansu where there is no Java 17+), a fresh database and fresh topics per test."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from services.app.container import Container
from services.runtime.bootstrap import bootstrap
from services.runtime.embedded import (
    EmbeddedPostgres,
    embedded_broker,
    free_port,
)
from services.settings import Settings
from tests.helpers.infra import Infra, delete_topics, fresh_settings
from tests.helpers.service import RunningService, token_settings


@pytest.fixture(scope="session")
def infra(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Infra]:
    postgres = EmbeddedPostgres(tmp_path_factory.mktemp("pg") / "data").start()
    home = Path(tmp_path_factory.mktemp("broker"))
    broker = embedded_broker(
        home,
        free_port(),
        kind=os.environ.get("LEADSCORE_EMBEDDED_BROKER_KIND", "kafka"),
        log_file=home / "broker.log",
    )
    yield Infra(postgres, broker)
    broker.stop()


@pytest.fixture
async def settings(infra: Infra) -> AsyncIterator[Settings]:
    """Settings for one test: its own database, topics and consumer group."""
    settings = await fresh_settings(infra)
    yield settings
    await delete_topics(settings)


@pytest.fixture
async def service(settings: Settings) -> AsyncIterator[RunningService]:
    running = await RunningService(bootstrap(settings)).start()
    yield running
    await running.close()


@pytest.fixture
async def admin_container(settings: Settings) -> AsyncIterator[Container]:
    """The API's container on a migrated database with the starter rules, without Kafka."""
    from services.adapters.postgres import db, rule_set_store

    container = bootstrap(token_settings(settings))
    await db.migrate(container.db)
    async with container.db.connect() as conn:
        await rule_set_store.ensure_starter(await db.driver(conn))
    yield container
    await container.close()


@pytest.fixture
async def open_container(settings: Settings) -> AsyncIterator[Container]:
    """The `make run` default, without Kafka loops running: a migrated database with the
    starter rules, no API tokens (loopback callers get every role)."""
    from services.adapters.postgres import db, rule_set_store

    container = bootstrap(settings)
    await db.migrate(container.db)
    async with container.db.connect() as conn:
        await rule_set_store.ensure_starter(await db.driver(conn))
    yield container
    await container.close()
