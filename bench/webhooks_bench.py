"""Does a dead webhook endpoint slow Kafka output? `python -m bench.webhooks_bench`.

The same backlog is drained back to back (alternating, on fresh databases) with no endpoint
and with one endpoint that takes every record and never answers (a loopback server that
accepts connections and stays silent, so each request runs into its timeout). Drained means
every event committed and every output record published to Kafka (bench.run.wait_drained);
the deliveries queued for the dead endpoint are counted too. The raw ceiling is measured in
the same run.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
from datetime import UTC, datetime
from typing import Any

import asyncpg
from cryptography.fernet import Fernet

from bench.harness import Infra
from bench.run import RESULTS, backlog, drain_variant, produce_all, raw_ceiling
from services.adapters.kafka import ensure_topics
from services.runtime.embedded import free_port
from services.settings import Settings


async def silent_server() -> tuple[asyncio.Server, int]:
    """Accepts, reads, never answers."""

    async def hang(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while await reader.read(65536):
                pass
        finally:
            writer.close()

    server = await asyncio.start_server(hang, "127.0.0.1", 0)
    return server, server.sockets[0].getsockname()[1]


async def deliveries_in(settings: Settings, database: str) -> int:
    """Deliveries queued in a drained variant's database (drain_variant names it)."""
    assert settings.database_url is not None
    base, _, query = settings.database_url.get_secret_value().partition("?")
    url = base.rsplit("/", 1)[0] + f"/{database}" + (f"?{query}" if query else "")
    pg = await asyncpg.connect(url.replace("+asyncpg", ""))
    try:
        return int(await pg.fetchval("SELECT count(*) FROM webhook_deliveries"))
    finally:
        await pg.close()


async def run(args: argparse.Namespace) -> int:
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S")
    infra = Infra()
    key = Fernet.generate_key()
    base = infra.settings(Settings(), f"wh-{stamp}")
    settings = (await infra.fresh_database(base, "wh_run")).with_changes(http_port=free_port())
    await ensure_topics(settings)
    server, port = await silent_server()
    os.environ.update(
        {
            "LEADSCORE_SECRETS_KEY": key.decode(),
            "LEADSCORE_OUTBOUND_ALLOW_PRIVATE": "true",
            "LEADSCORE_OUTBOUND_ALLOW_HTTP": "true",
        }
    )
    sealed = Fernet(key).encrypt(b"whsec_" + b"A" * 43 + b"=")
    result: dict[str, Any] = {"when": stamp, "events": args.events, "runs": []}

    async def dead_endpoint(pg: asyncpg.Connection) -> None:
        await pg.execute(
            "INSERT INTO webhook_endpoints (id, name, kind, url, secret, records, "
            "retry_hours, rate_per_second, created_by) VALUES ('ep_dead', 'dead', 'webhook', "
            "$1, $2, $3, 24, 1000, 'bench')",
            f"http://127.0.0.1:{port}/hook",
            sealed,
            ["transitions", "notifications", "account_transitions", "account_notifications"],
        )

    try:
        docs = backlog(args)
        await produce_all(settings, docs, "produce backlog")
        result["ceiling_events_per_s"] = round(await raw_ceiling(settings, len(docs)))
        for round_ in range(args.rounds):
            for name, prepare in (("none", None), ("dead", dead_endpoint)):
                label = f"wh-{round_}-{name}"
                rate = await drain_variant(infra, settings, len(docs), label, prepare)
                run_result = {
                    "endpoint": name,
                    "end_to_end_events_per_s": round(rate),
                    "share_of_ceiling": round(rate / result["ceiling_events_per_s"], 4),
                }
                if name == "dead":
                    run_result["deliveries_queued"] = await deliveries_in(
                        settings, f"bench_{label.replace('-', '_')}"
                    )
                result["runs"].append(run_result)
                print(f"{label}: {rate:,.0f} ev/s", flush=True)
    finally:
        server.close()
        infra.stop()
    out = RESULTS / f"webhooks-{stamp}.json"
    RESULTS.mkdir(exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    print(f"ceiling {result['ceiling_events_per_s']:,} ev/s")
    for r in result["runs"]:
        rate, share = r["end_to_end_events_per_s"], r["share_of_ceiling"]
        print(f"{r['endpoint']:<6} {rate:>7,} ev/s {share:.1%} {r.get('deliveries_queued', '')}")
    print(f"(also in {out})")
    return 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--events", type=int, default=50_000)
    parser.add_argument("--leads", type=int, default=5_000)
    parser.add_argument("--accounts", type=int, default=500)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=2)
    raise SystemExit(asyncio.run(run(args=parser.parse_args())))


if __name__ == "__main__":
    main()
