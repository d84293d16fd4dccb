"""Scale-out on one machine: several service processes in one consumer group share the
topic's partitions and publish their records at the same time (the outbox relay works by
lane, so no instance waits for another's relay); one is killed mid-stream and the others take
its partitions over.

    make demo-cluster          (3 processes, 6 partitions, 60,000 events)
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import asyncpg
import httpx

from bench.harness import Infra, committed, outbox_pending, produce, start_service
from bench.run import wait_ready
from bench.workload import generate
from scoring_service.engine import Engine
from scoring_service.rule_set_files import starter_ruleset
from scoring_service.simulation import replay_documents
from services.adapters.kafka import ensure_topics
from services.runtime.embedded import free_port
from services.settings import Settings


class PublishWatch:
    """Samples each instance's published-records counter (its /metrics) several times a
    second: in how many windows did every running instance publish something?"""

    def __init__(self, ports: list[int]) -> None:
        self.ports = ports
        self.totals: list[float] = [0.0] * len(ports)
        self.running = [True] * len(ports)
        self.windows = 0
        self.windows_all_published = 0
        self.most_at_once = 0
        # Windows by how many instances published in them: {0: .., 1: .., 2: .., 3: ..}.
        self.by_count: dict[int, int] = {}

    async def _total(self, client: httpx.AsyncClient, port: int) -> float | None:
        try:
            text = (await client.get(f"http://127.0.0.1:{port}/metrics")).text
        except httpx.HTTPError:
            return None
        return sum(
            float(line.rsplit(" ", 1)[1])
            for line in text.splitlines()
            if line.startswith("leadscore_outbox_published_total{")
        )

    async def run(self, every: float = 0.25) -> None:
        async with httpx.AsyncClient(timeout=2) as client:
            while True:
                totals = await asyncio.gather(*(self._total(client, p) for p in self.ports))
                rose = 0
                for n, total in enumerate(totals):
                    if total is None or not self.running[n]:
                        continue
                    rose += total > self.totals[n]
                    self.totals[n] = total
                self.windows += 1
                self.most_at_once = max(self.most_at_once, rose)
                self.by_count[rose] = self.by_count.get(rose, 0) + 1
                self.windows_all_published += rose == sum(self.running)
                await asyncio.sleep(every)


async def scale_out(
    settings: Settings,
    docs: list[Any],
    *,
    processes: int,
    kill_at: float,
    log_dir: Path,
    say: Any = print,
) -> dict[str, Any]:
    """Run `processes` instances, kill one with SIGKILL once `kill_at` of the events are
    scored, wait for the rest to finish, and compare every lead with a single replay."""
    await ensure_topics(settings)
    ports = [free_port() for _ in range(processes)]
    members = [
        start_service(settings.with_changes(http_port=port), log_dir / f"instance-{n}.log")
        for n, port in enumerate(ports)
    ]
    say(f"started {processes} instances: pids {[m.pid for m in members]}")
    watch = PublishWatch(ports)
    watching: asyncio.Task[None] | None = None
    try:
        # Every instance ready (and in the group) before the first event, so the windows
        # counted are ones in which all of them could publish.
        await asyncio.gather(*(wait_ready(port, m) for port, m in zip(ports, members, strict=True)))
        watching = asyncio.create_task(watch.run())
        feeding = asyncio.create_task(produce(settings, docs))
        while await committed(settings) < kill_at * len(docs):
            await asyncio.sleep(0.05)
        victim = members[0]
        victim.send_signal(signal.SIGKILL)
        victim.wait(10)
        watch.running[0] = False
        publishing = dict(
            windows=watch.windows,
            all_published=watch.windows_all_published,
            by_count=dict(sorted(watch.by_count.items())),
        )
        killed_at = await committed(settings)
        say(
            f"before the kill, all {processes} instances published in "
            f"{publishing['all_published']} of {publishing['windows']} quarter-second windows "
            f"(windows by instances publishing: {publishing['by_count']})"
        )
        say(f"killed instance 0 (pid {victim.pid}) after {killed_at:,} events")
        sent = await feeding
        started = time.monotonic()
        while await committed(settings) < sent or await outbox_pending(settings) != 0:
            if time.monotonic() - started > 300:
                raise TimeoutError("the surviving instances did not drain the topic")
            await asyncio.sleep(0.2)
        say(f"the other {processes - 1} instances drained all {sent:,} events")
    finally:
        if watching is not None:
            watching.cancel()
        for member in members:
            if member.poll() is None:
                member.send_signal(signal.SIGTERM)
        for member in members:
            try:
                member.wait(30)
            except subprocess.TimeoutExpired:
                member.kill()
    expected = replay_documents(Engine(starter_ruleset()), docs, now=time.time())
    assert settings.database_url is not None
    conn = await asyncpg.connect(settings.database_url.get_secret_value().replace("+asyncpg", ""))
    try:
        rows = {
            r["lead_id"]: r
            for r in await conn.fetch("SELECT lead_id, stage, fit, engagement, seq FROM leads")
        }
    finally:
        await conn.close()
    different = [
        lead
        for lead, state in expected.ws.leads.items()
        if lead not in rows
        or rows[lead]["stage"] != state.stage
        or rows[lead]["seq"] != state.seq
        or abs(rows[lead]["fit"] - state.fit) > 1e-9
        or abs(rows[lead]["engagement"] - state.engagement) > 1e-6
    ]
    return {
        "events": sent,
        "killed_after": killed_at,
        # Before the kill: sampling windows, and those in which every instance published.
        "windows_before_kill": publishing["windows"],
        "windows_all_instances_published": publishing["all_published"],
        "windows_by_instances_publishing": publishing["by_count"],
        "most_instances_publishing_in_one_window": watch.most_at_once,
        "published_by_instance": [round(t) for t in watch.totals],
        "leads": len(expected.ws.leads),
        "leads_in_database": len(rows),
        "leads_different": different[:10],
        "same_as_single_run": not different and len(rows) == len(expected.ws.leads),
    }


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--processes", type=int, default=3)
    parser.add_argument("--events", type=int, default=60_000)
    parser.add_argument("--leads", type=int, default=3_000)
    args = parser.parse_args()
    infra = Infra()
    try:
        settings = await infra.fresh_database(infra.settings(Settings(), "cluster"), "cluster")
        docs = list(generate(events=args.events, leads=args.leads, seed=9))
        result = await scale_out(
            settings,
            docs,
            processes=args.processes,
            kill_at=0.6,
            log_dir=Path(tempfile.mkdtemp(prefix="leadscore-cluster-")),
        )
    finally:
        infra.stop()
    print(result)
    if not result["same_as_single_run"]:
        raise SystemExit("final scores differ from a single-process run")
    print("final scores and stages equal a single-process run")


if __name__ == "__main__":
    asyncio.run(main())
