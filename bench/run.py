"""`make bench`: the figures a streaming service must reach, measured in one run.

1. raw ceiling: a plain aiokafka consumer reading and JSON-decoding the workload;
2. end to end: the service (its own process) draining the backlog, from readiness to the
   last output record published with offsets committed;
3. latency at a steady offered load: event append time to the append time of the
   transition or notification it caused;
4. the pure engine alone, on one core, with the starter rules, 100 and 500 rules;
5. peak RSS of the service (the soak, `make soak`, measures RSS over 10 minutes);
6. the cost of scoring accounts: the same backlog drained again, by a fresh service whose
   rule set has no `accounts` section (a new database and consumer group, same input topic).
It exits non-zero if the service lost or double-counted an event (checked against the pure
engine's replay of the same events).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import statistics
import subprocess
import sys
import time
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import orjson
import psutil
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from tqdm import tqdm

from bench.engine_bench import RULE_COUNTS, measure
from bench.harness import Infra, committed, outbox_pending, start_service
from bench.workload import generate, lead_key
from schemas.ruleset import RuleSetDocument
from scoring_service.engine import Engine
from scoring_service.ruleset_files import starter_document, starter_ruleset
from scoring_service.simulation import replay_documents
from services.db import create_engine, migrate
from services.embedded import free_port
from services.kafka import ensure_topics
from services.rulesets import activate, publish
from services.settings import Settings

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"


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


class RssSampler:
    """Samples a process's resident memory, for its peak."""

    def __init__(self, pid: int) -> None:
        self.process = psutil.Process(pid)
        self.peak = 0
        self.last = 0

    async def run(self) -> None:
        while True:
            try:
                self.last = self.process.memory_info().rss
            except psutil.Error:
                return
            self.peak = max(self.peak, self.last)
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


async def steady_load(settings: Settings, docs: list[Any], rate: float) -> dict[str, int]:
    """Offer `rate` events/s, in 10 ms ticks; returns messageId -> append time."""
    producer = AIOKafkaProducer(bootstrap_servers=settings.kafka_bootstrap, linger_ms=0)
    await producer.start()
    stamps: dict[str, int] = {}
    try:
        per_tick = rate / 100
        started = time.perf_counter()
        sent = 0
        pending: list[tuple[Any, Any]] = []
        with tqdm(
            total=len(docs), desc=f"steady {rate:,.0f} ev/s", unit="ev", mininterval=1
        ) as bar:
            while sent < len(docs):
                due = min(len(docs), int((time.perf_counter() - started) * 100 * per_tick) + 1)
                for doc in docs[sent:due]:
                    value = doc if isinstance(doc, bytes) else orjson.dumps(doc)
                    pending.append(
                        (doc, await producer.send(settings.topic_events, value, key=lead_key(doc)))
                    )
                bar.update(due - sent)
                sent = due
                if len(pending) > 2000:
                    await _settle(pending, stamps)
                await asyncio.sleep(0.01)
        await _settle(pending, stamps)
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


def latencies(outputs: list[tuple[dict[str, Any], int]], stamps: dict[str, int]) -> list[float]:
    """Milliseconds from each event's append to each output record it caused."""
    cause = {v["transition_id"]: v["caused_by"] for v, _ in outputs if "transition_id" in v}
    result = []
    for value, appended in outputs:
        message = (
            value.get("caused_by")
            if "transition_id" in value
            else cause.get(value["notification_id"].rsplit(":", 1)[0])
        )
        if message in stamps:
            result.append(float(appended - stamps[message]))
    return result


def without_accounts() -> RuleSetDocument:
    """The starter rule set without its `accounts` section: leads scored, accounts not."""
    return starter_document().model_copy(update={"accounts": None})


async def drain_without_accounts(infra: Infra, settings: Settings, total: int) -> float:
    """Drain the backlog again with accounts not scored; returns events/s."""
    other = (await infra.fresh_database(settings, "bench_without_accounts")).with_changes(
        consumer_group=f"{settings.consumer_group}-without-accounts",
        topic_transitions=f"{settings.topic_transitions}-without-accounts",
        topic_account_transitions=f"{settings.topic_account_transitions}-without-accounts",
        topic_notifications=f"{settings.topic_notifications}-without-accounts",
        topic_dlq=f"{settings.topic_dlq}-without-accounts",
        http_port=free_port(),
    )
    assert other.database_url is not None
    url = other.database_url.get_secret_value()
    engine = create_engine(url)
    try:
        await migrate(engine)
    finally:
        await engine.dispose()
    pg = await asyncpg.connect(url.replace("+asyncpg", ""))
    try:
        async with pg.transaction():
            version = await publish(pg, without_accounts(), by="bench", comment="no accounts")
            await activate(pg, version, by="bench")
    finally:
        await pg.close()
    service = start_service(other, RESULTS / "service-without-accounts.log")
    try:
        await wait_ready(other.http_port, service)
        seconds = await wait_drained(other, total, "drain backlog, accounts not scored")
    finally:
        service.send_signal(signal.SIGTERM)
        service.wait(30)
    return total / seconds


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
    """The figures against the targets, one line each."""
    lat = result.get("latency_ms", {})
    engine = result.get("engine", {})
    check = result["check"]
    rows = [
        ("raw ceiling (aiokafka + orjson)", "", f"{result['ceiling_events_per_s']:,} ev/s"),
        (
            "end to end, one process",
            ">= 20,000 ev/s",
            f"{result['end_to_end_events_per_s']:,} ev/s "
            f"({result['end_to_end_share_of_ceiling']:.1%} of ceiling)",
        ),
        (
            f"latency p50/p95/p99 at {lat.get('offered_events_per_s', 0):,.0f} ev/s",
            "p99 <= 100 ms",
            f"{lat.get('p50')}/{lat.get('p95')}/{lat.get('p99')} ms",
        ),
        ("latency max", "<= 1,000 ms", f"{lat.get('max')} ms"),
        (
            "end to end, accounts not scored",
            "cost of accounts <= 15%",
            f"{result.get('end_to_end_events_per_s_without_accounts', 0):,} ev/s "
            f"(accounts cost {result.get('accounts_throughput_cost', 0):.1%})",
        ),
        ("intake (parse, validate)", "", f"{engine.get('parse_events_per_s', 0):,} ev/s"),
        *[
            (
                f"engine, {n} rules",
                ">= 150,000 ev/s" if n == RULE_COUNTS[0] else "linear in rules",
                f"{engine.get(f'score_events_per_s_{n}_rules', 0):,} ev/s",
            )
            for n in RULE_COUNTS
        ],
        (
            "RSS after backlog / peak / end",
            "end within 10% of start",
            f"{result.get('rss_after_backlog_mb')} / {result.get('rss_peak_mb')} / "
            f"{result.get('rss_end_mb')} MB",
        ),
        (
            "events lost or double-counted",
            "0",
            f"{check['leads_with_wrong_event_count']} leads wrong "
            f"({check['events_scored']:,} of {check['expected']:,} scored)",
        ),
        (
            "account roll-ups unlike the replay",
            "0",
            f"{check['accounts_with_wrong_rollup']} of {check['accounts']} accounts",
        ),
    ]
    width = max(len(r[0]) for r in rows)
    return "\n".join(f"{name:<{width}}  {target:<24}  {value}" for name, target, value in rows)


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


async def run(args: argparse.Namespace) -> int:
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S")
    infra = Infra()
    base = infra.settings(Settings(), f"bench-{stamp}")
    settings = (await infra.fresh_database(base, "bench_run")).with_changes(http_port=free_port())
    await ensure_topics(settings)
    result: dict[str, Any] = {"when": stamp, "events": args.events, "leads": args.leads}
    service: subprocess.Popen[bytes] | None = None
    try:
        docs = list(
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
        await produce_all(settings, docs, "produce backlog")
        result["ceiling_events_per_s"] = round(await raw_ceiling(settings, len(docs)))

        service = start_service(settings, RESULTS / f"service-{stamp}.log")
        if args.profile:
            start_profiler(service.pid, RESULTS / f"profile-{stamp}.txt")
        sampler = RssSampler(service.pid)
        sampling = asyncio.create_task(sampler.run())
        await wait_ready(settings.http_port, service)
        seconds = await wait_drained(settings, len(docs), "drain backlog")
        result["end_to_end_events_per_s"] = round(len(docs) / seconds)
        result["end_to_end_share_of_ceiling"] = round(
            result["end_to_end_events_per_s"] / result["ceiling_events_per_s"], 3
        )
        result["rss_after_backlog_mb"] = round(sampler.last / 2**20, 1)
        result["check"] = await check(settings, docs)

        steady = list(
            generate(
                events=int(args.rate * args.seconds),
                leads=args.leads,
                seed=args.seed + 1,
                accounts=args.accounts,
                # Live traffic: event times are the send times, give or take a few seconds.
                start=datetime.now(UTC),
                days=args.seconds / 86400 / 4,
            )
        )
        stamps = await steady_load(settings, steady, args.rate)
        await wait_drained(settings, len(docs) + len(steady), "drain steady load")
        lat = latencies(await read_outputs(settings), stamps)
        result["latency_ms"] = (
            {
                "offered_events_per_s": args.rate,
                "seconds": args.seconds,
                "samples": len(lat),
                "p50": percentile(lat, 0.5),
                "p95": percentile(lat, 0.95),
                "p99": percentile(lat, 0.99),
                "max": max(lat),
                "mean": round(statistics.mean(lat), 1),
            }
            if lat
            else {"samples": 0}
        )
        result["rss_peak_mb"] = round(sampler.peak / 2**20, 1)
        result["rss_end_mb"] = round(sampler.last / 2**20, 1)
        result["rss_growth_since_backlog"] = round(
            sampler.last / 2**20 / result["rss_after_backlog_mb"] - 1, 3
        )
        service.send_signal(signal.SIGTERM)
        service.wait(30)
        sampling.cancel()
        without = await drain_without_accounts(infra, settings, len(docs))
        result["end_to_end_events_per_s_without_accounts"] = round(without)
        result["accounts_throughput_cost"] = round(
            1 - result["end_to_end_events_per_s"] / without, 3
        )
        result["engine"] = measure(docs)
    finally:
        if service is not None and service.poll() is None:
            service.kill()
        infra.stop()
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"bench-{stamp}.json").write_text(json.dumps(result, indent=2))
    print(table(result))
    print(f"(also in {RESULTS / f'bench-{stamp}.json'})")
    check_result = result["check"]
    if (
        check_result["leads_with_wrong_event_count"]
        or check_result["leads_with_wrong_score"]
        or check_result["accounts_with_wrong_rollup"]
    ):
        print("FAILED: the pipeline lost or double-counted events", file=sys.stderr)
        return 1
    return 0


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--leads", type=int, default=20_000)
    parser.add_argument("--rate", type=float, default=2000, help="steady load, events/s")
    parser.add_argument("--seconds", type=float, default=60, help="steady load duration")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument(
        "--accounts", type=int, default=2_000, help="companies the people work for (10 each)"
    )
    parser.add_argument("--profile", action="store_true", help="py-spy the service's drain")
    sys.exit(asyncio.run(run(parser.parse_args())))


if __name__ == "__main__":
    main()
