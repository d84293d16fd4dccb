"""Shared fixtures: one real embedded PostgreSQL and one real Apache Kafka broker per test
session (Tansu where there is no Java 17+), a fresh database and fresh topics per test."""

from __future__ import annotations

import asyncio
import itertools
import os
import time
from collections.abc import AsyncIterator, Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import orjson
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from pydantic import SecretStr

from services.app.container import Container
from services.outputs import all_topics
from services.runtime.bootstrap import bootstrap
from services.runtime.embedded import (
    Broker,
    EmbeddedKafka,
    EmbeddedPostgres,
    embedded_broker,
    free_port,
)
from services.settings import Settings

_names = itertools.count(1)


class Infra:
    def __init__(self, postgres: EmbeddedPostgres, broker: Broker) -> None:
        self.postgres = postgres
        self.broker = broker

    @property
    def is_kafka(self) -> bool:
        return isinstance(self.broker, EmbeddedKafka)

    async def new_database(self) -> str:
        name = f"t{os.getpid()}_{next(_names)}"
        conn = await asyncpg.connect(self.postgres.database_url().replace("+asyncpg", ""))
        try:
            await conn.execute(f'CREATE DATABASE "{name}"')
        finally:
            await conn.close()
        return self.postgres.database_url(name)


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


async def delete_topics(settings: Settings) -> None:
    """A test's topics go with it: a broker holding thousands of partitions slows down."""
    from aiokafka.admin import AIOKafkaAdminClient

    admin = AIOKafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap)
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        doomed = [t for t in all_topics(settings) if t in existing]
        if doomed:
            await admin.delete_topics(doomed)
    finally:
        await admin.close()


async def fresh_settings(infra: Infra) -> Settings:
    """Settings with a database, topics and a consumer group no one else uses."""
    n = next(_names)
    return Settings(
        kafka_bootstrap=infra.broker.bootstrap,
        database_url=await infra.new_database(),
        topic_events=f"lead-events-{n}",
        topic_transitions=f"lead-status-transitions-{n}",
        topic_account_transitions=f"account-status-transitions-{n}",
        topic_notifications=f"sales-notifications-{n}",
        topic_dlq=f"lead-events-dlq-{n}",
        topic_feedback=f"sales-feedback-{n}",
        consumer_group=f"leadscore-{n}",
        http_port=0,
        outbox_poll_seconds=0.1,
        kafka_enable_idempotence=infra.is_kafka,
    )


async def wait_for(condition: Callable[[], Any], *, timeout: float = 30, what: str = "") -> Any:
    """Poll `condition` (sync or async) until it returns something truthy, or fail."""
    deadline = time.monotonic() + timeout
    while True:
        result = condition()
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what or condition}")
        await asyncio.sleep(0.05)


class FakeClock:
    """A wall clock the test moves by hand (for follow-up deadlines)."""

    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


# Before every event time the tests use, so no deadline falls due unless a test says so.
SLA_EPOCH = datetime(2026, 1, 1, tzinfo=UTC).timestamp()


class RunningService:
    """A service instance (consumers, deadline watcher, relay) in the test's event loop."""

    def __init__(self, container: Container, clock: FakeClock | None = None) -> None:
        self.container = container
        self.clock = clock or FakeClock(SLA_EPOCH)
        container.sla.clock = self.clock
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


@pytest.fixture
async def service(settings: Settings) -> AsyncIterator[RunningService]:
    running = await RunningService(bootstrap(settings)).start()
    yield running
    await running.close()


async def produce(
    settings: Settings,
    docs: list[dict[str, Any] | bytes],
    *,
    key: Callable[[Any], bytes | None] | None = None,
) -> None:
    """Send events to the input topic, keyed by userId else anonymousId by default."""
    # Room for the oversized messages some tests send on purpose.
    producer = AIOKafkaProducer(
        bootstrap_servers=settings.kafka_bootstrap, linger_ms=5, max_request_size=8 * 1024 * 1024
    )
    await producer.start()
    try:
        futures = []
        for doc in docs:
            if isinstance(doc, bytes):
                value, k = doc, None
            else:
                value = orjson.dumps(doc)
                k = (
                    key(doc)
                    if key
                    else (doc.get("userId") or doc.get("anonymousId") or "").encode() or None
                )
            futures.append(await producer.send(settings.topic_events, value, key=k))
        await asyncio.gather(*futures)
    finally:
        await producer.stop()


async def read_all(
    settings: Settings, topic: str, *, expect: int, timeout: float = 30
) -> list[Any]:
    """Read `topic` from the start until at least `expect` records are there."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=settings.kafka_bootstrap,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
    )
    await consumer.start()
    try:
        partitions = [TopicPartition(topic, p) for p in range(settings.topic_partitions)]
        consumer.assign(partitions)
        await consumer.seek_to_beginning(*partitions)
        records: list[Any] = []
        deadline = time.monotonic() + timeout
        while len(records) < expect and time.monotonic() < deadline:
            batch = await consumer.getmany(timeout_ms=200)
            for items in batch.values():
                records.extend(items)
        # Pick up anything beyond `expect` that is already there.
        ends = await consumer.end_offsets(partitions)

        async def behind() -> bool:
            return any([await consumer.position(tp) < ends[tp] for tp in partitions])

        while await behind():
            for items in (await consumer.getmany(timeout_ms=200)).values():
                records.extend(items)
        return records
    finally:
        await consumer.stop()


def values(records: list[Any]) -> list[dict[str, Any]]:
    return [orjson.loads(r.value) for r in records]


async def connect_db(settings: Settings) -> asyncpg.Connection:
    """A connection of the test's own to its database (the caller closes it)."""
    assert settings.database_url is not None
    return await asyncpg.connect(settings.database_url.get_secret_value().replace("+asyncpg", ""))


async def db_fetch(settings: Settings, query: str, *args: Any) -> list[asyncpg.Record]:
    conn = await connect_db(settings)
    try:
        return await conn.fetch(query, *args)
    finally:
        await conn.close()


async def migrate_to(settings: Settings, revision: str | None = None) -> None:
    """Bring the test's database to `revision` (None: the latest), as an upgrade would."""
    from alembic import command

    from services.adapters.postgres.db import alembic_config, create_engine, migrate

    assert settings.database_url is not None
    engine = create_engine(settings.database_url.get_secret_value())
    try:
        if revision is None:
            await migrate(engine)
            return
        async with engine.connect() as conn:
            await conn.run_sync(lambda c: command.upgrade(alembic_config(c), revision))
            await conn.commit()
    finally:
        await engine.dispose()


async def committed(settings: Settings) -> int:
    """How many input records the service has committed (the sum of its stored offsets)."""
    tables = "SELECT 1 FROM pg_tables WHERE tablename = 'consumer_offsets'"
    if not await db_fetch(settings, tables):
        return 0  # the service has not migrated yet
    rows = await db_fetch(
        settings,
        "SELECT coalesce(sum(next_offset), 0) AS n FROM consumer_offsets WHERE topic = $1",
        settings.topic_events,
    )
    return int(rows[0]["n"])


async def committed_at_least(settings: Settings, n: int) -> bool:
    return await committed(settings) >= n


async def drained(settings: Settings, produced: int) -> bool:
    """Every produced record is committed and every outbox record published."""
    rows = await db_fetch(
        settings,
        "SELECT (SELECT coalesce(sum(next_offset), 0) FROM consumer_offsets WHERE topic = $1) "
        "AS done, (SELECT count(*) FROM outbox WHERE sent_at IS NULL AND failed_at IS NULL) "
        "AS pending",
        settings.topic_events,
    )
    return bool(rows[0]["done"] == produced and rows[0]["pending"] == 0)


def replay(docs: list[Any]) -> Any:
    """The same events through the pure pipeline, in memory: what the service must match."""
    from scoring_service.engine import Engine
    from scoring_service.ruleset_files import starter_ruleset
    from scoring_service.simulation import replay_documents

    return replay_documents(Engine(starter_ruleset()), docs, now=time.time())


async def assert_leads_match(settings: Settings, expected: Any) -> None:
    """Every lead's stage, transitions counted and scores, every score of several, as the
    replay has them."""
    rows = await db_fetch(
        settings,
        "SELECT lead_id, stage, fit, engagement, seq, (scoring->'totals')::text AS totals, "
        "(scoring->'journey')::text AS journey, journey_phase FROM leads",
    )
    actual = {r["lead_id"]: r for r in rows}
    assert set(actual) == set(expected.ws.leads)
    several = expected.engine.rules.book.several
    for lead_id, state in expected.ws.leads.items():
        row = actual[lead_id]
        assert (row["stage"], row["seq"]) == (state.stage, state.seq), lead_id
        # The buyer journey: the phase (its column too), touches and content seen.
        journey = state.journey.to_doc() if state.journey is not None else None
        assert (orjson.loads(row["journey"]) if row["journey"] else None) == journey, lead_id
        assert row["journey_phase"] == (journey or {}).get("phase"), lead_id
        assert abs(row["fit"] - state.fit) < 1e-9, lead_id
        assert abs(row["engagement"] - state.engagement) < 1e-6, lead_id
        if several:
            # Kept to the cent as each batch wrote the lead: a cent's rounding at most apart.
            stored = orjson.loads(row["totals"])
            for name, total in expected.engine.totals(state).items():
                assert abs(stored[name] - total) < 0.01 + 1e-6, (lead_id, name)


# A lead record's `account_score` depends on how far the account's other members, on other
# partitions, had got at that moment: not fixed by the input, so not compared with a replay
# (the account roll-up itself is, by assert_accounts_match).
NOT_FIXED_BY_INPUT = ("emitted_at", "account_score")


async def assert_transitions_as_replayed(settings: Settings, expected: Any) -> None:
    """Every expected lead transition is on the topic under its lead's key, as the replay
    has it; copies are identical; and the account roll-ups equal the replay's."""
    transitions = expected.transitions
    records = await read_all(settings, settings.topic_transitions, expect=len(transitions))
    copies: dict[str, list[dict[str, Any]]] = {}
    for record in records:
        value = orjson.loads(record.value)
        assert record.key == value["lead_id"].encode()
        copies.setdefault(value["transition_id"], []).append(value)
    assert set(copies) == {t["transition_id"] for t in transitions}
    for versions in copies.values():  # a duplicate is the same record under the same id
        assert all(v == versions[0] for v in versions)
    for t in transitions:
        published = copies[t["transition_id"]][0]
        assert {k: v for k, v in published.items() if k not in NOT_FIXED_BY_INPUT} == {
            k: v for k, v in t.items() if k not in NOT_FIXED_BY_INPUT
        }
    await assert_accounts_match(settings, expected)
    await assert_journey_as_replayed(settings, expected)


async def assert_journey_as_replayed(settings: Settings, expected: Any) -> None:
    """Every lead's buyer-journey moves are stored once, as the replay made them. (An
    account's moves depend on the order its members' events arrive across partitions; its
    phase does not, and assert_accounts_match compares that.)"""
    rows = await db_fetch(
        settings,
        "SELECT subject_id, seq, from_phase, to_phase, reason, rule_id, caused_by, content, "
        "channel, seen::text AS seen, extract(epoch FROM occurred_at)::float8 AS occurred_at, "
        "ruleset_version FROM journey_moves WHERE subject = 'lead' ORDER BY subject_id, seq",
    )
    stored = [{**dict(r), "seen": orjson.loads(r["seen"]), "subject": "lead"} for r in rows]
    moves = sorted(
        (m for m in expected.journey_moves if m["subject"] == "lead"),
        key=lambda m: (m["subject_id"], m["seq"]),
    )
    assert len(stored) == len(moves)
    for row, move in zip(stored, moves, strict=True):
        assert abs(row.pop("occurred_at") - move["occurred_at"]) < 1e-5, move
        assert row == {k: v for k, v in move.items() if k != "occurred_at"}


async def assert_accounts_match(settings: Settings, expected: Any) -> None:
    """Every account's roll-up equals the replay's: its members' engagement, clocks and
    roles, and the parts of its score (these do not depend on the order events arrive in)."""
    rows = await db_fetch(
        settings,
        "SELECT account_id, fit, engagement, coverage, roles_covered, scoring::text AS s, "
        "journey_phase FROM accounts",
    )
    actual = {r["account_id"]: r for r in rows}
    assert set(actual) == set(expected.ws.accounts)
    for account_id, account in expected.ws.accounts.items():
        row = actual[account_id]
        members = {k: tuple(v) for k, v in orjson.loads(row["s"]).get("members", {}).items()}
        assert set(members) == set(account.members), account_id
        for lead_id, (engagement, as_of, role) in account.members.items():
            stored = members[lead_id]
            assert abs(stored[0] - engagement) < 1e-6, (account_id, lead_id)
            assert stored[1:] == (as_of, role), (account_id, lead_id)
        # Several scores: each member's named engagement as the replay has it.
        stored_by = orjson.loads(row["s"]).get("members_by", {})
        for lead_id, named in account.members_by.items():
            for name, engagement in named.items():
                assert abs(stored_by[lead_id].get(name, 0.0) - engagement) < 1e-6, (
                    account_id,
                    lead_id,
                    name,
                )
        assert abs(row["engagement"] - account.engagement) < 1e-6, account_id
        phase = account.journey.phase if account.journey is not None else None
        assert row["journey_phase"] == phase, account_id
        assert (row["fit"], row["coverage"], list(row["roles_covered"])) == (
            account.fit,
            account.coverage,
            account.covered,
        ), account_id


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


@pytest.fixture
async def admin_container(settings: Settings) -> AsyncIterator[Container]:
    """The API's container on a migrated database with the starter rules, without Kafka."""
    from services.adapters.postgres import db, rulesets

    container = bootstrap(token_settings(settings))
    await db.migrate(container.db)
    async with container.db.connect() as conn:
        await rulesets.ensure_starter(await db.driver(conn))
    yield container
    await container.close()


@pytest.fixture
async def open_container(settings: Settings) -> AsyncIterator[Container]:
    """The `make run` default, without Kafka loops running: a migrated database with the
    starter rules, no API tokens (loopback callers get every role)."""
    from services.adapters.postgres import db, rulesets

    container = bootstrap(settings)
    await db.migrate(container.db)
    async with container.db.connect() as conn:
        await rulesets.ensure_starter(await db.driver(conn))
    yield container
    await container.close()
