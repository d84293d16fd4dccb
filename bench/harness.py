"""Shared pieces of the benchmarks: infrastructure, a service in process, producing, waiting."""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import asyncpg
import orjson
import psutil
from aiokafka import AIOKafkaProducer

from bench.workload import lead_key
from services.app.container import Container
from services.runtime.bootstrap import bootstrap
from services.runtime.embedded import (
    Broker,
    EmbeddedPostgres,
    EmbeddedTansu,
    embedded_broker,
    free_port,
)
from services.settings import Settings


class Infra:
    """The configured broker and database, or embedded ones in a temporary folder."""

    def __init__(self) -> None:
        self.postgres: EmbeddedPostgres | None = None
        self.broker: Broker | None = None
        self.folder = Path(tempfile.mkdtemp(prefix="leadscore-bench-"))

    def settings(self, base: Settings, name: str) -> Settings:
        updates: dict[str, Any] = {
            "topic_events": f"{name}-events",
            "topic_transitions": f"{name}-transitions",
            "topic_account_transitions": f"{name}-account-transitions",
            "topic_notifications": f"{name}-notifications",
            "topic_dlq": f"{name}-dlq",
            "topic_erasures": f"{name}-erasures",
            "topic_feedback": f"{name}-feedback",
            "consumer_group": f"{name}-group",
        }
        if base.kafka_bootstrap is None:
            self.broker = self.broker or embedded_broker(
                self.folder,
                free_port(),
                kind=base.embedded_broker_kind,
                log_file=self.folder / "broker.log",
            )
            updates["kafka_bootstrap"] = self.broker.bootstrap
            if isinstance(self.broker, EmbeddedTansu):
                updates["kafka_enable_idempotence"] = False
        if base.database_url is None:
            if self.postgres is None:
                self.postgres = EmbeddedPostgres(self.folder / "pg", cleanup="delete").start()
            updates["database_url"] = self.postgres.database_url()
        return base.with_changes(**updates)

    async def fresh_database(self, settings: Settings, name: str) -> Settings:
        """A new, empty database beside the configured one."""
        assert settings.database_url is not None
        url = settings.database_url.get_secret_value()
        conn = await asyncpg.connect(url.replace("+asyncpg", ""))
        try:
            await conn.execute(f'DROP DATABASE IF EXISTS "{name}"')
            await conn.execute(f'CREATE DATABASE "{name}"')
        finally:
            await conn.close()
        base, _, query = url.partition("?")
        new_url = base.rsplit("/", 1)[0] + f"/{name}" + (f"?{query}" if query else "")
        return settings.with_changes(database_url=new_url)

    def stop(self) -> None:
        if self.broker:
            self.broker.stop()
        shutil.rmtree(self.folder, ignore_errors=True)


class InProcessService:
    def __init__(self, settings: Settings) -> None:
        self.container: Container = bootstrap(settings)
        self.stop = asyncio.Event()
        self.tasks: list[asyncio.Task[None]] = []

    async def start(self) -> InProcessService:
        await self.container.start()
        self.tasks = self.container.run(self.stop)
        while not self.container.consumer.assignment():
            await asyncio.sleep(0.05)
        return self

    async def close(self) -> None:
        self.stop.set()
        await asyncio.gather(*self.tasks)
        await self.container.close()


async def produce(settings: Settings, docs: Iterable[dict[str, Any] | bytes]) -> int:
    producer = AIOKafkaProducer(
        bootstrap_servers=settings.kafka_bootstrap, linger_ms=20, max_batch_size=512 * 1024
    )
    await producer.start()
    sent = 0
    try:
        pending = []
        for doc in docs:
            value = doc if isinstance(doc, bytes) else orjson.dumps(doc)
            pending.append(await producer.send(settings.topic_events, value, key=lead_key(doc)))
            sent += 1
            if len(pending) >= 5000:
                await asyncio.gather(*pending)
                pending.clear()
        await asyncio.gather(*pending)
    finally:
        await producer.stop()
    return sent


async def committed(settings: Settings) -> int:
    assert settings.database_url is not None
    conn = await asyncpg.connect(settings.database_url.get_secret_value().replace("+asyncpg", ""))
    try:
        if not await conn.fetchval("SELECT to_regclass('consumer_offsets') IS NOT NULL"):
            return 0  # not migrated yet
        return int(
            await conn.fetchval(
                "SELECT coalesce(sum(next_offset), 0) FROM consumer_offsets WHERE topic = $1",
                settings.topic_events,
            )
        )
    finally:
        await conn.close()


async def wait_committed(settings: Settings, total: int, timeout: float = 600) -> float:
    """Seconds until `total` input records are committed."""
    started = time.perf_counter()
    while await committed(settings) < total:
        if time.perf_counter() - started > timeout:
            raise TimeoutError(f"only {await committed(settings)} of {total} records committed")
        await asyncio.sleep(0.05)
    return time.perf_counter() - started


def start_service(settings: Settings, log: Path, **extra_env: str) -> subprocess.Popen[bytes]:
    """The service as its own process (`python -m services.runtime`), pointed at `settings`.
    LEADSCORE_BENCH_TREE runs the service of another checkout (bench/ab.py compares two)."""
    root = Path(os.environ.get("LEADSCORE_BENCH_TREE") or Path(__file__).resolve().parents[1])
    with log.open("ab") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "services.runtime"],
            cwd=root,
            env=service_env(settings, **extra_env),
            stdout=out,
            stderr=subprocess.STDOUT,
        )


def service_env(settings: Settings, **extra: str) -> dict[str, str]:
    """The environment that points a service process at `settings`' broker, database, topics."""
    assert settings.database_url is not None and settings.kafka_bootstrap is not None
    env = dict(os.environ)
    env.update(
        {
            "LEADSCORE_KAFKA_BOOTSTRAP": settings.kafka_bootstrap,
            "LEADSCORE_DATABASE_URL": settings.database_url.get_secret_value(),
            "LEADSCORE_TOPIC_EVENTS": settings.topic_events,
            "LEADSCORE_TOPIC_TRANSITIONS": settings.topic_transitions,
            "LEADSCORE_TOPIC_ACCOUNT_TRANSITIONS": settings.topic_account_transitions,
            "LEADSCORE_TOPIC_NOTIFICATIONS": settings.topic_notifications,
            "LEADSCORE_TOPIC_DLQ": settings.topic_dlq,
            "LEADSCORE_TOPIC_ERASURES": settings.topic_erasures,
            "LEADSCORE_TOPIC_FEEDBACK": settings.topic_feedback,
            "LEADSCORE_CONSUMER_GROUP": settings.consumer_group,
            "LEADSCORE_HTTP_PORT": str(settings.http_port),
            "LEADSCORE_LOG_LEVEL": "WARNING",
            **extra,
        }
    )
    return env


async def outbox_pending(settings: Settings) -> int:
    assert settings.database_url is not None
    conn = await asyncpg.connect(settings.database_url.get_secret_value().replace("+asyncpg", ""))
    try:
        if not await conn.fetchval("SELECT to_regclass('outbox') IS NOT NULL"):
            return -1
        return int(
            await conn.fetchval(
                "SELECT count(*) FROM outbox WHERE sent_at IS NULL AND failed_at IS NULL"
            )
        )
    finally:
        await conn.close()


ROLES = ("service", "postgres", "broker")


def _role(name: str | None, cmdline: list[str] | None) -> str | None:
    """Which part of the system a process is: the service, PostgreSQL or the broker."""
    if name == "postgres":
        return "postgres"
    command = " ".join(cmdline or ())
    if "services.runtime" in command:
        return "service"
    if "kafka.Kafka" in command:
        return "broker"
    return None


class ProcessCpu:
    """CPU seconds the service, PostgreSQL and the broker spent between `start` and
    `seconds`, from psutil: sampled twice a second meanwhile, since processes come and go
    (PostgreSQL's backends with the service's connections; a process's time counts from 0
    when it was not there at the start)."""

    def __init__(self) -> None:
        self.first: dict[int, tuple[str, float]] = {}
        self.last: dict[int, tuple[str, float]] = {}
        self._task: asyncio.Task[None] | None = None
        self.spent: dict[str, float] = {}

    @staticmethod
    def _sample() -> dict[int, tuple[str, float]]:
        seen = {}
        for process in psutil.process_iter(["name", "cmdline", "cpu_times"]):
            times = process.info["cpu_times"]
            role = _role(process.info["name"], process.info["cmdline"])
            if role is not None and times is not None:
                seen[process.pid] = (role, times.user + times.system)
        return seen

    def start(self) -> None:
        self.first = self._sample()
        self.last = dict(self.first)
        self._task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(0.5)
            self.last.update(self._sample())

    def stop(self) -> dict[str, float]:
        """Stop sampling: the CPU seconds per role since `start` (also kept in `spent`)."""
        if self._task is not None:
            self._task.cancel()
        self.last.update(self._sample())
        spent = dict.fromkeys(ROLES, 0.0)
        for pid, (role, total) in self.last.items():
            first = self.first.get(pid)
            spent[role] += total - (first[1] if first is not None else 0.0)
        self.spent = spent
        return spent

    def per_event_us(self, events: int) -> dict[str, float]:
        """Microseconds of CPU per event per role, and their sum."""
        per = {role: round(s / events * 1e6, 1) for role, s in self.spent.items()}
        per["total"] = round(sum(self.spent.values()) / events * 1e6, 1)
        return per
