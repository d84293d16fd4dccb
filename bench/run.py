"""`make bench`: the figures a streaming service must reach, measured in one run, beside
the figures of `bench/baseline.json` (the run before the November 2026 performance work).

1. raw ceiling: a plain aiokafka consumer reading and JSON-decoding the workload;
2. end to end: the service (its own process) draining the 200,000-event backlog, from
   readiness to the last output record published with offsets committed;
3. latency at a steady offered load (5 minutes at 2,000 events/s by default) on a topic of
   its own, read by the service restarted on the same database (whose deadline watcher then
   breaches the backlog's overdue follow-ups while live events arrive): event append time to
   the append time of the transition or notification it caused, with the slowest records;
4. the pure engine alone, on one core, with the starter rules, 100 and 500 rules;
5. the service's RSS after the backlog, after the steady load's warm-up, peak and at the end;
6. the cost of scoring accounts: the same backlog drained again, by a fresh service whose
   rule set has no `accounts` section (a new database and consumer group, same input topic).
It exits non-zero if the service lost or double-counted an event (checked against the pure
engine's replay of the same events). `--soak` (make soak) runs 1 to 3 only and fails when
RSS or p99 drift.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import statistics
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import orjson
import psutil
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from tqdm import tqdm

import scoring_service.engine
from bench.engine_bench import RULE_COUNTS, measure, one_score_document, parse_all
from bench.harness import Infra, ProcessCpu, committed, outbox_pending, start_service
from bench.workload import generate, lead_key
from schemas.rule_set import RuleSetDocument
from scoring_service.engine import Engine
from scoring_service.rule_set_files import starter_document, starter_ruleset
from scoring_service.simulation import replay_documents
from services.adapters.kafka import ensure_topics
from services.adapters.postgres.db import create_engine, migrate
from services.adapters.postgres.rule_set_store import activate, ensure_starter, publish
from services.pipeline import challenger
from services.runtime.embedded import free_port
from services.settings import Settings
from stage_router.compiled import is_compiled

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
BASELINE = ROOT / "bench" / "baseline.json"


async def produce_all(settings: Settings, docs: list[Any], label: str) -> dict[str, int]:
    """Send the workload as fast as the broker takes it; returns messageId -> append time."""
    producer = AIOKafkaProducer(
        bootstrap_servers=settings.kafka_bootstrap, linger_ms=20, max_batch_size=512 * 1024
    )
    await producer.start()
    stamps: dict[str, int] = {}
    try:
        pending: list[tuple[Any, Any]] = []
        for doc in tqdm(docs, desc=label, unit="ev", mininterval=1):
            value = doc if isinstance(doc, bytes) else orjson.dumps(doc)
            pending.append(
                (doc, await producer.send(settings.topic_events, value, key=lead_key(doc)))
            )
            if len(pending) >= 5000:
                await _settle(pending, stamps)
        await _settle(pending, stamps)
    finally:
        await producer.stop()
    return stamps


async def _settle(pending: list[tuple[Any, Any]], stamps: dict[str, int]) -> None:
    for doc, future in pending:
        metadata = await future
        if isinstance(doc, dict):
            stamps.setdefault(doc["messageId"], metadata.timestamp)
    pending.clear()


async def raw_ceiling(settings: Settings, total: int) -> float:
    """Events/s of a plain consumer that reads and decodes the topic: the ceiling."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=settings.kafka_bootstrap,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        max_partition_fetch_bytes=4 * 1024 * 1024,
    )
    await consumer.start()
    try:
        partitions = [
            TopicPartition(settings.topic_events, p) for p in range(settings.topic_partitions)
        ]
        consumer.assign(partitions)
        await consumer.seek_to_beginning(*partitions)
        seen = 0
        started = time.perf_counter()
        while seen < total:
            for records in (await consumer.getmany(timeout_ms=500, max_records=5000)).values():
                for record in records:
                    try:
                        orjson.loads(record.value)
                    except orjson.JSONDecodeError:
                        pass
                seen += len(records)
        return total / (time.perf_counter() - started)
    finally:
        await consumer.stop()


async def rss_after(sampler: RssSampler, seconds: float) -> int:
    """The service's RSS `seconds` from now (after the steady load's warm-up)."""
    await asyncio.sleep(seconds)
    return sampler.last


class RssSampler:
    """Samples a process's resident memory, for its peak and its course (one sample kept
    per 10 s, with the wall-clock time in ms)."""

    def __init__(self, pid: int) -> None:
        self.process = psutil.Process(pid)
        self.peak = 0
        self.last = 0
        self.course: list[tuple[int, int]] = []

    async def run(self) -> None:
        while True:
            try:
                self.last = self.process.memory_info().rss
            except psutil.Error:
                return
            self.peak = max(self.peak, self.last)
            now = int(time.time() * 1000)
            if not self.course or now - self.course[-1][0] >= 10_000:
                self.course.append((now, self.last))
            await asyncio.sleep(0.2)


async def wait_ready(port: int, process: subprocess.Popen[bytes], timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    async with httpx.AsyncClient() as client:
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise RuntimeError("the service exited during start-up")
            try:
                if (await client.get(f"http://127.0.0.1:{port}/readyz")).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            await asyncio.sleep(0.05)
    raise TimeoutError("the service did not become ready")


async def wait_drained(settings: Settings, total: int, label: str) -> float:
    """Seconds until every input record is committed and every output record published."""
    started = time.perf_counter()
    with tqdm(total=total, desc=label, unit="ev", mininterval=1) as bar:
        while True:
            done = await committed(settings)
            bar.update(done - bar.n)
            if done >= total and await outbox_pending(settings) == 0:
                return time.perf_counter() - started
            await asyncio.sleep(0.02)


Prepared = tuple[str, bytes | None, bytes]  # messageId, key, value


def prepare(events: Iterable[Any]) -> list[Prepared]:
    """Events serialised before the load starts: making them while sending took half a core
    from the service being measured (an hour's soak is 3.6 million, about 1.3 GB here).

    orjson hands back each document in a 4 KB allocation whatever its length: kept by the
    million that was 15 GB for the hour's soak, so each is copied to its own size."""
    return [
        (doc.get("messageId", ""), lead_key(doc), bytes(memoryview(orjson.dumps(doc))))
        if isinstance(doc, dict)
        else ("", None, doc)
        for doc in events
    ]


async def steady_load(settings: Settings, events: list[Prepared], rate: float) -> dict[str, int]:
    """Offer `rate` events/s, in 10 ms ticks; returns messageId -> append time.

    Each tick's events go as one batch per partition (the partition the key picks, as a
    keyed send would): a future per record cost the load generator most of a core at
    1,000 events/s on this machine, taken from the service being measured."""
    total = len(events)
    topic = settings.topic_events
    producer = AIOKafkaProducer(bootstrap_servers=settings.kafka_bootstrap, linger_ms=0)
    await producer.start()
    stamps: dict[str, int] = {}
    try:
        await producer.partitions_for(topic)
        per_tick = rate / 100
        started = time.perf_counter()
        sent = 0
        pending: list[Any] = []
        with tqdm(total=total, desc=f"steady {rate:,.0f} ev/s", unit="ev", mininterval=1) as bar:
            while sent < total:
                due = min(total, int((time.perf_counter() - started) * 100 * per_tick) + 1)
                batches: dict[int, Any] = {}
                now_ms = int(time.time() * 1000)
                for message_id, key, value in events[sent:due]:
                    partition = producer._partition(topic, None, None, None, key, None)
                    batch = batches.get(partition)
                    if batch is None:
                        batch = batches[partition] = producer.create_batch()
                    if batch.append(timestamp=now_ms, key=key, value=value) is None:
                        batch.close()  # full (a tick that fell behind): send it, start another
                        pending.append(await producer.send_batch(batch, topic, partition=partition))
                        batch = batches[partition] = producer.create_batch()
                        batch.append(timestamp=now_ms, key=key, value=value)
                    if message_id:
                        stamps.setdefault(message_id, now_ms)
                for partition, batch in batches.items():
                    batch.close()
                    pending.append(await producer.send_batch(batch, topic, partition=partition))
                bar.update(due - sent)
                sent = due
                if len(pending) > 500:
                    await asyncio.gather(*pending)
                    pending.clear()
                await asyncio.sleep(0.01)
        await asyncio.gather(*pending)
    finally:
        await producer.stop()
    return stamps


async def read_outputs(settings: Settings) -> list[tuple[dict[str, Any], int]]:
    consumer = AIOKafkaConsumer(
        bootstrap_servers=settings.kafka_bootstrap,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
    )
    await consumer.start()
    try:
        partitions = [
            TopicPartition(t, p)
            for t in (settings.topic_transitions, settings.topic_notifications)
            for p in range(settings.topic_partitions)
        ]
        consumer.assign(partitions)
        await consumer.seek_to_beginning(*partitions)
        ends = await consumer.end_offsets(partitions)
        out: list[tuple[dict[str, Any], int]] = []
        while any([await consumer.position(tp) < ends[tp] for tp in partitions]):
            for records in (await consumer.getmany(timeout_ms=500, max_records=10000)).values():
                out.extend((orjson.loads(r.value), r.timestamp) for r in records)
        return out
    finally:
        await consumer.stop()


def latencies(
    outputs: list[tuple[dict[str, Any], int]], stamps: dict[str, int]
) -> list[tuple[int, float, str]]:
    """(append time of the event, milliseconds from it to an output record it caused, what
    that record is), for every output record a steady-load event caused."""
    cause = {v["transition_id"]: v["caused_by"] for v, _ in outputs if "transition_id" in v}
    result = []
    for value, appended in outputs:
        if "transition_id" in value:
            message, kind = value.get("caused_by"), f"transition to {value.get('to_stage')}"
        elif value.get("type") == "sla_breach":
            continue  # caused by a deadline passing, not by an event's arrival
        else:
            message = cause.get(value["notification_id"].rsplit(":", 1)[0])
            kind = f"notification {value.get('type')}"
        if message in stamps:
            result.append((stamps[message], float(appended - stamps[message]), kind))
    return result


def latency_summary(
    samples: list[tuple[int, float]], rate: float, seconds: float
) -> dict[str, Any]:
    """Percentiles over the whole steady load, and p99 of its first and last minute (whose
    drift the soak judges)."""
    if not samples:
        return {"samples": 0}
    lat = [ms for _, ms, _ in samples]
    start = min(t for t, _, _ in samples)
    end = max(t for t, _, _ in samples)
    first = [ms for t, ms, _ in samples if t < start + 60_000]
    last = [ms for t, ms, _ in samples if t > end - 60_000]
    summary = {
        "offered_events_per_s": rate,
        "seconds": seconds,
        "samples": len(lat),
        "p50": percentile(lat, 0.5),
        "p95": percentile(lat, 0.95),
        "p99": percentile(lat, 0.99),
        "max": max(lat),
        "mean": round(statistics.mean(lat), 1),
        "over_1s": sum(ms > 1000 for ms in lat),
        # The slowest records: when in the run their event came (s), how late, what they were.
        "slowest": [
            [round((t - start) / 1000, 1), ms, kind]
            for t, ms, kind in sorted(samples, key=lambda s: -s[1])[:5]
        ],
    }
    if seconds >= 120:
        summary["p99_first_minute"] = percentile(first, 0.99)
        summary["p99_last_minute"] = percentile(last, 0.99)
        summary["p99_drift"] = round(
            summary["p99_last_minute"] / summary["p99_first_minute"] - 1, 3
        )
    if seconds >= 1200:
        # The soak judges ten-minute windows: one slow minute says little over an hour.
        first10 = [ms for t, ms, _ in samples if t < start + 600_000]
        last10 = [ms for t, ms, _ in samples if t > end - 600_000]
        summary["p99_first_10_minutes"] = percentile(first10, 0.99)
        summary["p99_last_10_minutes"] = percentile(last10, 0.99)
        summary["p99_drift"] = round(
            summary["p99_last_10_minutes"] / summary["p99_first_10_minutes"] - 1, 3
        )
    by_minute: dict[int, list[float]] = {}
    for t, ms, _ in samples:
        by_minute.setdefault(int((t - start) // 60_000), []).append(ms)
    summary["per_minute"] = [
        {"minute": m, "samples": len(v), "p99": percentile(v, 0.99), "max": max(v)}
        for m, v in sorted(by_minute.items())
    ]
    summary["started_at_ms"] = start
    return summary


def rss_per_minute(course: list[tuple[int, int]], start_ms: int) -> list[list[float]]:
    """[minute, MB] of the service's RSS, the last sample of each minute of the steady load."""
    minutes: dict[int, int] = {}
    for t, rss in course:
        if t >= start_ms:
            minutes[int((t - start_ms) // 60_000)] = rss
    return [[m, round(rss / 2**20, 1)] for m, rss in sorted(minutes.items())]


def without_accounts() -> RuleSetDocument:
    """The starter rule set without its `accounts` section: leads scored, accounts not."""
    return starter_document().model_copy(update={"accounts": None})


async def drain_variant(
    infra: Infra,
    settings: Settings,
    total: int,
    name: str,
    prepare: Callable[[asyncpg.Connection], Awaitable[None]] | None = None,
    *,
    load: Callable[[str], Awaitable[None]] | None = None,
    meter: ProcessCpu | None = None,
) -> float:
    """Drain the backlog again on a database of its own, prepared by `prepare` in one
    transaction (rules published and activated, a challenger started) or filled by `load`
    (given the database's URL: history stored beforehand); returns events/s."""
    other = (await infra.fresh_database(settings, f"bench_{name.replace('-', '_')}")).with_changes(
        consumer_group=f"{settings.consumer_group}-{name}",
        topic_transitions=f"{settings.topic_transitions}-{name}",
        topic_account_transitions=f"{settings.topic_account_transitions}-{name}",
        topic_notifications=f"{settings.topic_notifications}-{name}",
        topic_dlq=f"{settings.topic_dlq}-{name}",
        topic_erasures=f"{settings.topic_erasures}-{name}",
        http_port=free_port(),
    )
    assert other.database_url is not None
    url = other.database_url.get_secret_value()
    if prepare is not None or load is not None or not os.environ.get("LEADSCORE_BENCH_TREE"):
        # Another checkout's service (bench/ab.py) migrates its own database as it starts:
        # this tree's migrations may be ahead of it.
        engine = create_engine(url)
        try:
            await migrate(engine)
        finally:
            await engine.dispose()
    if load is not None:
        await load(url.replace("+asyncpg", ""))
    if prepare is not None:
        pg = await asyncpg.connect(url.replace("+asyncpg", ""))
        try:
            async with pg.transaction():
                await prepare(pg)
        finally:
            await pg.close()
    service = start_service(other, RESULTS / f"service-{name}.log")
    try:
        await wait_ready(other.http_port, service)
        if meter is not None:
            meter.start()
        seconds = await wait_drained(other, total, f"drain backlog, {name}")
        if meter is not None:
            meter.stop()
    finally:
        service.send_signal(signal.SIGTERM)
        service.wait(30)
    return total / seconds


async def drain_with_one_score(infra: Infra, settings: Settings, total: int) -> float:
    """Drain the backlog again with the starter set cut to one score; returns events/s."""

    async def prepare(pg: asyncpg.Connection) -> None:
        version = await publish(pg, one_score_document(), by="bench", comment="one score")
        await activate(pg, version, by="bench")

    return await drain_variant(infra, settings, total, "one-score", prepare)


async def drain_without_accounts(infra: Infra, settings: Settings, total: int) -> float:
    """Drain the backlog again with accounts not scored; returns events/s."""

    async def prepare(pg: asyncpg.Connection) -> None:
        version = await publish(pg, without_accounts(), by="bench", comment="no accounts")
        await activate(pg, version, by="bench")

    return await drain_variant(infra, settings, total, "without-accounts", prepare)


def challenger_document() -> RuleSetDocument:
    """A candidate as a quarterly review would try one: other points for pricing visits."""
    doc = starter_document().model_dump(mode="json", by_alias=True)
    for rule in doc["rules"]:
        if rule["id"] == "pricing-page":
            rule["points"] = 30
    return RuleSetDocument.model_validate(doc)


async def drain_with_challenger(infra: Infra, settings: Settings, total: int) -> float:
    """Drain the backlog again with a challenger scoring next to the starter rules."""

    async def prepare(pg: asyncpg.Connection) -> None:
        await ensure_starter(pg)
        version = await publish(pg, challenger_document(), by="bench", comment="challenger")
        await challenger.start(pg, version, by="bench")

    return await drain_variant(infra, settings, total, "with-challenger", prepare)


async def check(settings: Settings, docs: list[Any]) -> dict[str, Any]:
    """Compare the database with the pure engine's replay: lost or double-counted events,
    and the account roll-ups (which do not depend on arrival order)."""
    expected = replay_documents(Engine(starter_ruleset()), docs, now=time.time())
    per_lead = Counter(expected.ws.canonical(lead) for lead in expected.scored_for)
    assert settings.database_url is not None
    conn = await asyncpg.connect(settings.database_url.get_secret_value().replace("+asyncpg", ""))
    try:
        actual = {
            r["lead_id"]: r["n"]
            for r in await conn.fetch(
                "SELECT lead_id, count(*) AS n FROM lead_events GROUP BY lead_id"
            )
        }
        leads = {
            r["lead_id"]: r for r in await conn.fetch("SELECT lead_id, fit, engagement FROM leads")
        }
        accounts = {
            r["account_id"]: r
            for r in await conn.fetch("SELECT account_id, fit, engagement, coverage FROM accounts")
        }
    finally:
        await conn.close()
    stitched = {d.get("userId") for d in docs if isinstance(d, dict) and d.get("anonymousId")}
    # As for leads: a stitched member's traits (its role) depend on cross-partition order.
    wrong_accounts = [
        account_id
        for account_id, account in expected.ws.accounts.items()
        if not stitched & account.members.keys()
        and (
            account_id not in accounts
            or abs(accounts[account_id]["engagement"] - account.engagement) > 1e-6
            or accounts[account_id]["coverage"] != account.coverage
            or accounts[account_id]["fit"] != account.fit
        )
    ]
    wrong_counts = [
        lead
        for lead in per_lead.keys() | actual.keys()
        if per_lead.get(lead, 0) != actual.get(lead, 0)
    ]
    wrong_scores = [
        lead
        for lead, state in expected.ws.leads.items()
        if lead not in stitched
        and lead in leads
        and (
            abs(leads[lead]["fit"] - state.fit) > 1e-9
            or abs(leads[lead]["engagement"] - state.engagement) > 1e-6
        )
    ]
    return {
        "events_scored": sum(actual.values()),
        "expected": sum(per_lead.values()),
        "leads_with_wrong_event_count": len(wrong_counts),
        "leads_with_wrong_score": len(wrong_scores),
        "accounts": len(expected.ws.accounts),
        "accounts_with_wrong_rollup": len(wrong_accounts),
        "examples": (wrong_counts + wrong_scores + wrong_accounts)[:5],
    }


def start_profiler(pid: int, output: Path) -> subprocess.Popen[bytes]:
    """py-spy (not a dependency: pip install py-spy) samples the service for 40 s."""
    beside = Path(sys.executable).parent / "py-spy"
    return subprocess.Popen(
        [
            str(beside) if beside.exists() else "py-spy",
            "record",
            "--pid",
            str(pid),
            "--format",
            "raw",
            "--duration",
            "40",
            "--output",
            str(output),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def table(result: dict[str, Any]) -> str:
    """The figures against the targets, one line each, beside the baseline's (`before`)."""
    lat = result.get("latency_ms", {})
    engine = result.get("engine", {})
    check = result["check"]
    before = result.get("before", {})

    def was(key: str, unit: str = "ev/s") -> str:
        value = before.get(key)
        return "" if value is None else f"{value:,} {unit}"

    rows = [
        (
            "raw ceiling (aiokafka + orjson)",
            "",
            was("ceiling_events_per_s"),
            f"{result['ceiling_events_per_s']:,} ev/s",
        ),
        (
            "end to end, one process",
            ">= 25,000 ev/s",
            was("end_to_end_events_per_s"),
            f"{result['end_to_end_events_per_s']:,} ev/s "
            f"({result['end_to_end_share_of_ceiling']:.1%} of ceiling)",
        ),
        (
            f"latency p50/p95/p99, {lat.get('seconds', 0):.0f} s at "
            f"{lat.get('offered_events_per_s', 0):,.0f} ev/s",
            "p99 <= 100 ms",
            "/".join(str(before.get(f"latency_ms.{q}")) for q in ("p50", "p95", "p99")) + " ms",
            f"{lat.get('p50')}/{lat.get('p95')}/{lat.get('p99')} ms",
        ),
        (
            "latency p50/p99/max at the faster load",
            "report",
            "",
            "{offered_events_per_s:,.0f} ev/s for {seconds:.0f} s: {p50}/{p99}/{max} ms".format(
                **result["latency_ms_faster"]
            )
            if result.get("latency_ms_faster")
            else "",
        ),
        (
            "latency p99 first / last minute (drift)",
            "within 20%",
            "",
            f"{lat.get('p99_first_minute')} / {lat.get('p99_last_minute')} ms "
            f"({lat.get('p99_drift', 0):+.0%})",
        ),
        (
            "batch time by size (service's histogram, mean ms)",
            "20 events <= 5 ms",
            "",
            ", ".join(
                f"<={size}: {v['mean_ms']}"
                for size, v in result.get("batch_ms_by_size", {}).items()
            ),
        ),
        (
            "write-ahead log per event in the drain",
            "",
            "",
            f"{result.get('wal_bytes_per_event', 0):,} bytes",
        ),
        (
            "CPU per event in the drain: service / PostgreSQL / broker (sum)",
            "",
            "",
            " / ".join(
                f"{result.get('cpu_us_per_event', {}).get(role, 0)}"
                for role in ("service", "postgres", "broker")
            )
            + f" µs ({result.get('cpu_us_per_event', {}).get('total', 0)})",
        ),
        (
            "suppression check per event: service / PostgreSQL (100,000 suppressed)",
            "",
            "",
            suppression_text(result),
        ),
        (
            "latency max (records over 1 s)",
            "<= 1,000 ms",
            was("latency_ms.max", "ms"),
            f"{lat.get('max')} ms ({lat.get('over_1s')})",
        ),
        (
            "end to end, accounts not scored",
            "accounts cost <= 15%",
            "",
            f"{result.get('end_to_end_events_per_s_without_accounts', 0):,} ev/s "
            f"(accounts cost {result.get('accounts_throughput_cost', 0):.1%})",
        ),
        (
            "end to end, the starter set cut to one score",
            "two scores cost <= 1.2x",
            "",
            f"{result.get('end_to_end_events_per_s_one_score', 0):,} ev/s "
            f"(two scores cost {result.get('two_scores_cost_factor', 0)}x)",
        ),
        (
            "engine, one score / two scores (compiled)",
            "two scores cost <= 1.2x",
            "",
            f"{engine.get('score_events_per_s_one_score', 0):,} / "
            f"{engine.get('score_events_per_s_two_scores', 0):,} ev/s "
            f"({engine.get('two_scores_cost_factor', 0)}x)",
        ),
        (
            "engine, without / with the buyer journey (compiled)",
            "journey cost <= 1.15x",
            "",
            f"{engine.get('score_events_per_s_without_journey', 0):,} / "
            f"{engine.get('score_events_per_s_with_journey', 0):,} ev/s "
            f"({engine.get('journey_cost_factor', 0)}x)",
        ),
        (
            "end to end, with a challenger",
            "cost < 1.6x",
            "",
            f"{result.get('end_to_end_events_per_s_with_challenger', 0):,} ev/s "
            f"({result.get('challenger_cost_factor', 0)}x the time per event)",
        ),
        (
            "engine, a learned score beside the rules",
            "cost <= 1.1x",
            "",
            f"{engine.get('score_events_per_s_with_model', 0):,} ev/s "
            f"({engine.get('model_cost_factor', 0)}x)",
        ),
        (
            "engine, a learned score beside the rules, in instructions",
            "cost <= 1.1x",
            "",
            (
                f"{engine['instructions_per_event_with_model']:,} / "
                f"{engine['instructions_per_event_starter']:,} per event "
                f"({engine['model_cost_factor_instructions']}x)"
                if "model_cost_factor_instructions" in engine
                else "not counted: valgrind is not installed (make tools)"
            ),
        ),
        (
            "intake (parse, validate)",
            ">= 300,000 ev/s",
            was("engine.parse_events_per_s"),
            f"{engine.get('parse_events_per_s', 0):,} ev/s",
        ),
        *[
            (
                f"engine, {n} rules" + (" (compiled)" if result.get("compiled_core") else ""),
                ">= 150,000 ev/s" if n == RULE_COUNTS[0] else "linear in rules",
                was(f"engine.score_events_per_s_{n}_rules"),
                f"{engine.get(f'score_events_per_s_{n}_rules', 0):,} ev/s",
            )
            for n in RULE_COUNTS
        ],
        (
            "RSS after backlog / peak / end",
            "",
            was("rss_peak_mb", "MB peak"),
            f"{result.get('rss_after_backlog_mb')} / {result.get('rss_peak_mb')} / "
            f"{result.get('rss_end_mb')} MB",
        ),
        (
            "events lost or double-counted",
            "0",
            "",
            f"{check['leads_with_wrong_event_count']} leads wrong "
            f"({check['events_scored']:,} of {check['expected']:,} scored)",
        ),
        (
            "account roll-ups unlike the replay",
            "0",
            "",
            f"{check['accounts_with_wrong_rollup']} of {check['accounts']} accounts",
        ),
    ]
    rows.insert(0, ("", "target", "before", "now"))
    widths = [max(len(r[i]) for r in rows) for i in range(3)]
    return "\n".join(
        f"{name:<{widths[0]}}  {target:<{widths[1]}}  {old:<{widths[2]}}  {now}"
        for name, target, old, now in rows
    )


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def backlog(args: argparse.Namespace) -> list[Any]:
    """The backlog a drain is measured on: the site's mix, a third anonymous at first."""
    return list(
        generate(
            events=args.events,
            leads=args.leads,
            seed=args.seed,
            anonymous_share=0.3,
            duplicate_share=0.03,
            malformed_share=0.01,
            accounts=args.accounts,
            # Recent event times: follow-up deadlines lie ahead, as on a live site.
            recent=True,
        )
    )


async def run(args: argparse.Namespace) -> int:
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S")
    infra = Infra()
    base = infra.settings(Settings(), f"bench-{stamp}")
    settings = (await infra.fresh_database(base, "bench_run")).with_changes(http_port=free_port())
    await ensure_topics(settings)
    result: dict[str, Any] = {"when": stamp, "events": args.events, "leads": args.leads}
    service: subprocess.Popen[bytes] | None = None
    try:
        docs = backlog(args)
        await produce_all(settings, docs, "produce backlog")
        result["ceiling_events_per_s"] = round(await raw_ceiling(settings, len(docs)))

        service = start_service(settings, RESULTS / f"service-{stamp}.log")
        if args.profile:
            start_profiler(service.pid, RESULTS / f"profile-{stamp}.txt")
        sampler = RssSampler(service.pid)
        sampling = asyncio.create_task(sampler.run())
        await wait_ready(settings.http_port, service)
        meter = ProcessCpu()
        meter.start()
        wal_before = await wal_bytes(settings)
        seconds = await wait_drained(settings, len(docs), "drain backlog")
        meter.stop()
        # CPU per event of each process during the drain (the service, PostgreSQL, the broker),
        # and the write-ahead log PostgreSQL wrote per event.
        result["cpu_us_per_event"] = meter.per_event_us(len(docs))
        result["wal_bytes_per_event"] = round((await wal_bytes(settings) - wal_before) / len(docs))
        result["end_to_end_events_per_s"] = round(len(docs) / seconds)
        result["end_to_end_share_of_ceiling"] = round(
            result["end_to_end_events_per_s"] / result["ceiling_events_per_s"], 3
        )
        result["rss_after_backlog_mb"] = round(sampler.last / 2**20, 1)
        result["check"] = await check(settings, docs)

        steady_total = int(args.rate * args.seconds)
        steady = live_traffic(args, steady_total, args.seconds, seed=args.seed + 1)
        # The steady load goes to a topic of its own, read by a restarted service (same
        # database, same leads): the restarted deadline watcher finds the backlog's overdue
        # follow-ups and breaches them while live events arrive, the tail case. (A topic of
        # its own was first needed by Tansu, whose fetches slow down as a topic grows.)
        backlog_peak = sampler.peak
        service.send_signal(signal.SIGTERM)
        service.wait(30)
        sampling.cancel()
        live = settings.with_changes(topic_events=f"{settings.topic_events}-live")
        await ensure_topics(live)
        service = start_service(live, RESULTS / f"service-{stamp}-live.log")
        sampler = RssSampler(service.pid)
        sampling = asyncio.create_task(sampler.run())
        await wait_ready(live.http_port, service)
        # Warm-up: a minute in a bench run, five in an hour's soak (the lead and account
        # working sets take that long to be all touched once at 1,000 ev/s).
        warm_up = 300.0 if args.seconds >= 1200 else min(60.0, args.seconds / 2)
        warmed = asyncio.create_task(rss_after(sampler, warm_up))
        stamps = await steady_load(live, steady, args.rate)
        result["rss_after_warmup_mb"] = round(await warmed / 2**20, 1)
        await wait_drained(live, steady_total, "drain steady load")
        result["batch_ms_by_size"] = await batch_curve(live.http_port)
        fast_stamps: dict[str, int] = {}
        fast_total = int(args.fast_rate * args.fast_seconds)
        if fast_total and not args.soak:
            # A minute at a higher rate, after the steady load: the tail when batches grow.
            fast = live_traffic(args, fast_total, args.fast_seconds, seed=args.seed + 2)
            fast_stamps = await steady_load(live, fast, args.fast_rate)
            await wait_drained(live, steady_total + fast_total, "drain the faster load")
        outputs = await read_outputs(live)
        result["latency_ms"] = latency_summary(latencies(outputs, stamps), args.rate, args.seconds)
        if fast_stamps:
            fast_summary = latency_summary(
                latencies(outputs, fast_stamps), args.fast_rate, args.fast_seconds
            )
            result["latency_ms_faster"] = {
                k: fast_summary.get(k)
                for k in ("offered_events_per_s", "seconds", "samples", "p50", "p95", "p99", "max")
            }
        result["rss_mb_per_minute"] = rss_per_minute(
            sampler.course, result["latency_ms"].get("started_at_ms", 0)
        )
        result["rss_peak_mb"] = round(max(backlog_peak, sampler.peak) / 2**20, 1)
        result["rss_end_mb"] = round(sampler.last / 2**20, 1)
        result["rss_growth_after_warmup"] = round(
            result["rss_end_mb"] / result["rss_after_warmup_mb"] - 1, 3
        )
        service.send_signal(signal.SIGTERM)
        service.wait(30)
        sampling.cancel()
        if args.soak:
            return finish(result, stamp, soak=True)
        without = await drain_without_accounts(infra, settings, len(docs))
        result["end_to_end_events_per_s_without_accounts"] = round(without)
        result["accounts_throughput_cost"] = round(
            1 - result["end_to_end_events_per_s"] / without, 3
        )
        one_score = await drain_with_one_score(infra, settings, len(docs))
        result["end_to_end_events_per_s_one_score"] = round(one_score)
        # Seconds per event with the starter's two scores over seconds with one (<= 1.2).
        result["two_scores_cost_factor"] = round(one_score / result["end_to_end_events_per_s"], 3)
        with_challenger = await drain_with_challenger(infra, settings, len(docs))
        result["end_to_end_events_per_s_with_challenger"] = round(with_challenger)
        # Seconds per event with a challenger over seconds per event without (target < 1.6).
        result["challenger_cost_factor"] = round(
            result["end_to_end_events_per_s"] / with_challenger, 3
        )
        result["engine"] = measure(docs)
        result["suppression_us_per_event"] = await suppression_cost(settings, docs)
    finally:
        if service is not None and service.poll() is None:
            service.kill()
        infra.stop()
    return finish(result, stamp)


def live_traffic(args: argparse.Namespace, total: int, seconds: float, *, seed: int) -> list[Any]:
    """Events for a steady load of `seconds`, over the backlog's people and companies."""
    return prepare(
        generate(
            events=total,
            leads=args.leads,
            seed=seed,
            accounts=args.accounts,
            # Live traffic: event times are the send times, give or take a few seconds.
            start=datetime.now(UTC),
            days=seconds / 86400 / 4,
        )
    )


def suppression_text(result: dict[str, Any]) -> str:
    cost = result.get("suppression_us_per_event", {})
    return (
        f"{cost.get('service')} / {cost.get('postgres')} "
        f"({cost.get('postgres_100000_suppressed')}) µs"
    )


async def suppression_cost(settings: Settings, docs: list[Any]) -> dict[str, float]:
    """What checking the suppression list costs per event: the service's keyed hashes of
    each batch's ids and addresses, and PostgreSQL's lookup of them (the query
    `leadscore_open_batch` runs), on the drained database's list and with 100,000 keys on
    it (rolled back)."""
    from scoring_service.suppression import Suppression

    events = parse_all([d if isinstance(d, bytes) else orjson.dumps(d) for d in docs], time.time())
    keys = Suppression(b"bench secret").event_keys
    started = time.perf_counter()
    batches = [
        list({k for e in events[i : i + BATCH] for k in keys(e)})
        for i in range(0, len(events), BATCH)
    ]
    hashing = time.perf_counter() - started
    assert settings.database_url is not None
    pg = await asyncpg.connect(settings.database_url.get_secret_value().replace("+asyncpg", ""))
    lookup = "SELECT count(*) FROM suppressed_keys s WHERE s.key = ANY ($1::bytea[])"
    try:

        async def lookups() -> float:
            started = time.perf_counter()
            for batch in batches:
                await pg.fetchval(lookup, batch)
            return time.perf_counter() - started

        as_is = await lookups()
        trial = pg.transaction()
        await trial.start()
        try:
            await pg.execute(
                "INSERT INTO person_requests (id, kind, status, found_by, requested_by) "
                "VALUES ('00000000-0000-0000-0000-000000000001', 'erase', 'done', 'lead_id', "
                "'bench')"
            )
            await pg.execute(
                "INSERT INTO suppressed_keys (key, request_id) SELECT "
                "sha256(g::text::bytea), '00000000-0000-0000-0000-000000000001' "
                "FROM generate_series(1, 100000) g"
            )
            await pg.execute("ANALYZE suppressed_keys")
            full = await lookups()
        finally:
            await trial.rollback()
    finally:
        await pg.close()
    return {
        "service": round(hashing / len(events) * 1e6, 2),
        "postgres": round(as_is / len(events) * 1e6, 2),
        "postgres_100000_suppressed": round(full / len(events) * 1e6, 2),
    }


# Events per batch, as the service reads them by default (LEADSCORE_BATCH_MAX_RECORDS).
BATCH = 2000


async def wal_bytes(settings: Settings) -> int:
    """The write-ahead log's insert position in bytes: exact at once (pg_stat_wal's counters
    reach the view up to seconds late, as backends report them)."""
    assert settings.database_url is not None
    pg = await asyncpg.connect(settings.database_url.get_secret_value().replace("+asyncpg", ""))
    try:
        return int(await pg.fetchval("SELECT pg_current_wal_insert_lsn() - '0/0'::pg_lsn"))
    finally:
        await pg.close()


async def batch_curve(port: int) -> dict[str, dict[str, float]]:
    """Batch time against batch size from the service's own histogram
    (`leadscore_batch_seconds_by_size`): per size class, batches and mean milliseconds."""
    async with httpx.AsyncClient() as client:
        text = (await client.get(f"http://127.0.0.1:{port}/metrics")).text
    sums: dict[str, float] = {}
    counts: dict[str, float] = {}
    for line in text.splitlines():
        for suffix, into in (("_sum", sums), ("_count", counts)):
            prefix = f'leadscore_batch_seconds_by_size{suffix}{{size="'
            if line.startswith(prefix):
                size, _, value = line[len(prefix) :].partition('"} ')
                into[size] = float(value)
    return {
        size: {"batches": counts[size], "mean_ms": round(sums[size] / counts[size] * 1000, 2)}
        for size in sorted(counts, key=lambda s: float("inf") if s == "more" else int(s))
        if counts[size]
    }


async def challenger_cost(args: argparse.Namespace) -> int:
    """Only the challenger's cost: the same backlog drained by a service without and with a
    challenger, each on a database of its own (`make bench-challenger`)."""
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S")
    infra = Infra()
    settings = await infra.fresh_database(infra.settings(Settings(), f"bench-{stamp}"), "bench")
    await ensure_topics(settings)
    try:
        docs = backlog(args)
        await produce_all(settings, docs, "produce backlog")

        async def starter_only(pg: asyncpg.Connection) -> None:
            await ensure_starter(pg)

        without = await drain_variant(infra, settings, len(docs), "no-challenger", starter_only)
        with_one = await drain_with_challenger(infra, settings, len(docs))
    finally:
        infra.stop()
    result = {
        "when": stamp,
        "events": len(docs),
        "leads": args.leads,
        "events_per_s_without_challenger": round(without),
        "events_per_s_with_challenger": round(with_one),
        "challenger_cost_factor": round(without / with_one, 3),
    }
    path = RESULTS / f"challenger-{stamp}.json"
    path.write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))
    return 0


def finish(result: dict[str, Any], stamp: str, *, soak: bool = False) -> int:
    """Save the figures (with the baseline's, for before/after), print the table, and fail
    when events were lost or double-counted, or a soak target was missed."""
    result["before"] = before_figures()
    result["compiled_core"] = is_compiled(scoring_service.engine)
    RESULTS.mkdir(exist_ok=True)
    name = "soak" if soak else "bench"
    (RESULTS / f"{name}-{stamp}.json").write_text(json.dumps(result, indent=2))
    print(soak_table(result) if soak else table(result))
    print(f"(also in {RESULTS / f'{name}-{stamp}.json'})")
    check_result = result["check"]
    if (
        check_result["leads_with_wrong_event_count"]
        or check_result["leads_with_wrong_score"]
        or check_result["accounts_with_wrong_rollup"]
    ):
        print("FAILED: the pipeline lost or double-counted events", file=sys.stderr)
        return 1
    if soak and (
        abs(result["rss_growth_after_warmup"]) > 0.10
        or result["latency_ms"].get("p99_drift", 0) > 0.20
    ):
        print("FAILED: memory or latency drifted during the soak", file=sys.stderr)
        return 1
    return 0


def before_figures() -> dict[str, Any]:
    """The headline figures of bench/baseline.json: the run before the performance work of
    November 2026 (same workload, same machine), for the table's `before` column."""
    base = json.loads(BASELINE.read_text())
    return {key: value for key, value in flat(base).items() if key in HEADLINE}


# The keys (flattened with dots) that the table compares with the baseline.
HEADLINE = (
    "end_to_end_events_per_s",
    "ceiling_events_per_s",
    "end_to_end_share_of_ceiling",
    "latency_ms.p50",
    "latency_ms.p95",
    "latency_ms.p99",
    "latency_ms.max",
    "engine.parse_events_per_s",
    *(f"engine.score_events_per_s_{n}_rules" for n in RULE_COUNTS),
    "rss_peak_mb",
)


def flat(doc: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in doc.items():
        if isinstance(value, dict):
            out.update(flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def soak_table(result: dict[str, Any]) -> str:
    lat = result["latency_ms"]
    rows = [
        (
            f"RSS after warm-up / end ({lat['seconds']:.0f} s at "
            f"{lat['offered_events_per_s']:,.0f} ev/s)",
            "end within 10%",
            f"{result['rss_after_warmup_mb']} / {result['rss_end_mb']} MB "
            f"({result['rss_growth_after_warmup']:+.1%})",
        ),
        (
            "latency p99 first / last 10 minutes"
            if "p99_first_10_minutes" in lat
            else "latency p99 first / last minute",
            "last within 20%",
            f"{lat.get('p99_first_10_minutes', lat.get('p99_first_minute'))} / "
            f"{lat.get('p99_last_10_minutes', lat.get('p99_last_minute'))} ms "
            f"({lat.get('p99_drift', 0):+.1%})",
        ),
        ("latency p50/p95/p99/max", "", f"{lat['p50']}/{lat['p95']}/{lat['p99']}/{lat['max']} ms"),
    ]
    width = max(len(r[0]) for r in rows)
    return "\n".join(f"{name:<{width}}  {target:<16}  {value}" for name, target, value in rows)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--leads", type=int, default=20_000)
    parser.add_argument("--rate", type=float, default=2000, help="steady load, events/s")
    parser.add_argument("--seconds", type=float, default=300, help="steady load duration")
    parser.add_argument(
        "--soak", action="store_true", help="judge RSS and p99 drift; skip the other parts"
    )
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument(
        "--fast-rate", type=float, default=5000, help="a second, faster load, events/s (0: none)"
    )
    parser.add_argument("--fast-seconds", type=float, default=60, help="its duration")
    parser.add_argument(
        "--accounts", type=int, default=2_000, help="companies the people work for (10 each)"
    )
    parser.add_argument("--profile", action="store_true", help="py-spy the service's drain")
    parser.add_argument(
        "--challenger-only", action="store_true", help="only the challenger's cost per event"
    )
    args = parser.parse_args()
    sys.exit(asyncio.run(challenger_cost(args) if args.challenger_only else run(args)))


if __name__ == "__main__":
    main()
