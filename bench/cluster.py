"""Scale-out on one machine: several service processes in one consumer group share the
topic's partitions; one is killed mid-stream and the others take its partitions over.

    make demo-cluster          (3 processes, 6 partitions, 30,000 events)
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

from bench.harness import Infra, committed, outbox_pending, produce, start_service
from bench.workload import generate
from scoring_service.engine import Engine
from scoring_service.ruleset_files import starter_ruleset
from scoring_service.simulation import replay_documents
from services.kafka import ensure_topics
from services.settings import Settings


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
    members = [start_service(settings, log_dir / f"instance-{n}.log") for n in range(processes)]
    say(f"started {processes} instances: pids {[m.pid for m in members]}")
    try:
        feeding = asyncio.create_task(produce(settings, docs))
        while await committed(settings) < kill_at * len(docs):
            await asyncio.sleep(0.05)
        victim = members[0]
        victim.send_signal(signal.SIGKILL)
        victim.wait(10)
        killed_at = await committed(settings)
        say(f"killed instance 0 (pid {victim.pid}) after {killed_at:,} events")
        sent = await feeding
        started = time.monotonic()
        while await committed(settings) < sent or await outbox_pending(settings) != 0:
            if time.monotonic() - started > 300:
                raise TimeoutError("the surviving instances did not drain the topic")
            await asyncio.sleep(0.2)
        say(f"the other {processes - 1} instances drained all {sent:,} events")
    finally:
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
        "leads": len(expected.ws.leads),
        "leads_in_database": len(rows),
        "leads_different": different[:10],
        "same_as_single_run": not different and len(rows) == len(expected.ws.leads),
    }


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--processes", type=int, default=3)
    parser.add_argument("--events", type=int, default=30_000)
    parser.add_argument("--leads", type=int, default=1_500)
    args = parser.parse_args()
    infra = Infra()
    try:
        settings = await infra.fresh_database(infra.settings(Settings(), "cluster"), "cluster")
        docs = list(generate(events=args.events, leads=args.leads, seed=9))
        result = await scale_out(
            settings,
            docs,
            processes=args.processes,
            kill_at=0.3,
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
