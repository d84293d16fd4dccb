"""Back-to-back drains of one backlog under service settings that differ (an A/B on this
noisy machine, where only runs next to each other compare): `python -m bench.ab
LEADSCORE_CONSUMER_LANES=1 LEADSCORE_CONSUMER_LANES=2 --rounds 2`. Each variant drains the
same backlog on a fresh database, in alternation; the raw ceiling is measured in the same run.
Also reports the CPU time per event of the service, PostgreSQL and the broker during each
drain (from the service being ready to the backlog committed).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
from datetime import UTC, datetime
from typing import Any

from bench.harness import Infra, ProcessCpu
from bench.run import RESULTS, backlog, drain_variant, produce_all, raw_ceiling
from services.adapters.kafka import ensure_topics
from services.runtime.embedded import free_port
from services.settings import Settings


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
                    meter = ProcessCpu()
                    rate = await drain_variant(
                        infra, settings, len(docs), f"ab-{round_}-{n}", meter=meter
                    )
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
                        "cpu_us_per_event": meter.per_event_us(len(docs)),
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
            f"{r['share_of_ceiling']:.1%}  CPU us/event "
            + " ".join(f"{k} {v}" for k, v in r["cpu_us_per_event"].items())
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
