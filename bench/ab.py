"""Back-to-back drains of one backlog under service settings that differ (an A/B on this
noisy machine, where only runs next to each other compare): `python -m bench.ab
LEADSCORE_CONSUMER_LANES=1 LEADSCORE_CONSUMER_LANES=2 --rounds 2`. Each variant drains the
same backlog on a fresh database, in alternation; the raw ceiling is measured in the same run.
Also reports PostgreSQL's CPU time per event during each drain (service start included).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
from datetime import UTC, datetime
from typing import Any

import psutil

from bench.harness import Infra
from bench.run import RESULTS, backlog, drain_variant, produce_all, raw_ceiling
from services.adapters.kafka import ensure_topics
from services.runtime.embedded import free_port
from services.settings import Settings


class PostgresCpu:
    """CPU seconds PostgreSQL's processes spent while it runs: sampled twice a second, since
    backends come and go with the service's connections (a backend's time counts from 0
    when it was not there at the start)."""

    def __init__(self) -> None:
        self.first: dict[int, float] = self._sample()
        self.last: dict[int, float] = dict(self.first)

    @staticmethod
    def _sample() -> dict[int, float]:
        seen = {}
        for process in psutil.process_iter(["name", "cpu_times"]):
            times = process.info["cpu_times"]
            if process.info["name"] == "postgres" and times is not None:
                seen[process.pid] = times.user + times.system
        return seen

    async def run(self) -> None:
        while True:
            self.last.update(self._sample())
            await asyncio.sleep(0.5)

    def seconds(self) -> float:
        self.last.update(self._sample())
        return sum(t - self.first.get(pid, 0.0) for pid, t in self.last.items())


async def run(args: argparse.Namespace) -> int:
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S")
    infra = Infra()
    base = infra.settings(Settings(), f"ab-{stamp}")
    settings = (await infra.fresh_database(base, "ab_run")).with_changes(http_port=free_port())
    await ensure_topics(settings)
    result: dict[str, Any] = {"when": stamp, "events": args.events, "variants": args.variants}
    try:
        docs = backlog(args)
        await produce_all(settings, docs, "produce backlog")
        result["ceiling_events_per_s"] = round(await raw_ceiling(settings, len(docs)))
        runs = []
        for round_ in range(args.rounds):
            for n, variant in enumerate(args.variants):
                env = dict(item.split("=", 1) for item in variant.split(",") if item)
                saved = {k: os.environ.get(k) for k in env}
                os.environ.update(env)
                try:
                    pg = PostgresCpu()
                    sampling = asyncio.create_task(pg.run())
                    rate = await drain_variant(infra, settings, len(docs), f"ab-{round_}-{n}")
                    sampling.cancel()
                    pg_cpu = pg.seconds()
                finally:
                    for k, v in saved.items():
                        if v is None:
                            os.environ.pop(k, None)
                        else:
                            os.environ[k] = v
                runs.append(
                    {
                        "variant": variant,
                        "end_to_end_events_per_s": round(rate),
                        "share_of_ceiling": round(rate / result["ceiling_events_per_s"], 4),
                        "postgres_cpu_us_per_event": round(pg_cpu / len(docs) * 1e6, 1),
                    }
                )
                print(f"{variant or '(defaults)'}: {rate:,.0f} ev/s", flush=True)
        result["runs"] = runs
    finally:
        infra.stop()
    out = RESULTS / f"ab-{stamp}.json"
    RESULTS.mkdir(exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    print(f"ceiling {result['ceiling_events_per_s']:,} ev/s")
    for r in result["runs"]:
        print(
            f"{r['variant'] or '(defaults)':<40} {r['end_to_end_events_per_s']:>7,} ev/s "
            f"{r['share_of_ceiling']:.1%}  postgres {r['postgres_cpu_us_per_event']} us/event"
        )
    print(f"(also in {out})")
    return 0


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "variants", nargs="+", help="NAME=value[,NAME=value] per variant; '' for defaults"
    )
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--leads", type=int, default=20_000)
    parser.add_argument("--accounts", type=int, default=2_000)
    parser.add_argument("--seed", type=int, default=42)
    raise SystemExit(asyncio.run(run(parser.parse_args())))


if __name__ == "__main__":
    main()
