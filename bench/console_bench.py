"""Server time of every console page on the benchmark's 20,000 leads.

Scores 200,000 events from 20,000 people (the workload of `make bench`, placed in the last
30 days so the pipeline and impact pages have something to show) in a service process, then
asks for each page repeatedly and reads the time the server spent from its Server-Timing
header. The target is under 300 ms per page.

.venv/bin/python -m bench.console_bench [--events 200000 --leads 20000 --repeat 20]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import yaml

from bench.harness import Infra, produce, start_service, wait_committed
from bench.workload import generate
from services.runtime.embedded import free_port
from services.settings import Settings

RESULTS = Path(__file__).parent / "results"
TARGET_MS = 300.0


def server_ms(response: httpx.Response) -> float:
    match = re.search(r"dur=([0-9.]+)", response.headers.get("server-timing", ""))
    if response.status_code >= 400 or match is None:
        raise RuntimeError(f"{response.request.url} answered {response.status_code}")
    return float(match.group(1))


async def prepare(client: httpx.AsyncClient) -> dict[str, str]:
    """A second rule-set version and a finished impact report, for the pages that show them."""
    active = (await client.get("/v1/rulesets/active")).json()
    document = active["document"]
    for rule in document["rules"]:
        if rule["id"] == "pricing-page":
            rule["points"] = rule["points"] + 10
    published = await client.post(
        "/v1/rulesets",
        content=yaml.safe_dump(document),
        headers={"content-type": "application/yaml"},
        params={"comment": "console benchmark"},
    )
    version = published.json()["version"]
    job = (await client.post(f"/v1/rulesets/{version}/impact", json={"days": 30})).json()
    while (await client.get(job["status_url"])).json()["status"] == "running":
        await asyncio.sleep(0.5)
    top_lead = (await client.get("/v1/leads", params={"sort": "-score", "limit": 1})).json()
    top_account = (await client.get("/v1/accounts", params={"sort": "-score", "limit": 1})).json()
    return {
        "version": str(version),
        "job": job["job_id"],
        "lead": top_lead["items"][0]["lead_id"],
        "account": top_account["items"][0]["account_id"],
    }


async def measure(client: httpx.AsyncClient, ids: dict[str, str], repeat: int) -> dict[str, Any]:
    page = await client.get("/console/rules")  # the open console (loopback, no tokens)
    csrf = re.search(r'name="csrf" value="([^"]+)"', page.text)
    assert csrf is not None, "no CSRF token on the rules page"
    gets = {
        "leads (by score)": "/console/leads",
        "leads in mql": "/console/leads?stage=mql",
        "lead": f"/console/leads/{ids['lead']}",
        "accounts": "/console/accounts",
        "account": f"/console/accounts/{ids['account']}",
        "pipeline (30 days)": "/console/pipeline?days=30",
        "pipeline (365 days)": "/console/pipeline?days=365",
        "rules": "/console/rules",
        "version": f"/console/rules/{ids['version']}",
        "diff": f"/console/rules/{ids['version']}/diff",
        "editor": "/console/rules/new",
        "impact report": f"/console/jobs/{ids['job']}",
    }
    figures: dict[str, Any] = {}
    for name, path in gets.items():
        times = sorted([server_ms(await client.get(path)) for _ in range(repeat)])
        figures[name] = summary(times)
    times = []
    for _ in range(repeat):
        response = await client.post(
            f"/console/rules/{ids['version']}/simulate",
            data={
                "csrf": csrf.group(1),
                "journey": "Owner of a trucking firm: pricing, then a demo request",
            },
        )
        times.append(server_ms(response))
    figures["simulation"] = summary(sorted(times))
    return figures


def summary(times: list[float]) -> dict[str, float]:
    return {
        "p50_ms": round(times[len(times) // 2], 1),
        "p95_ms": round(times[min(len(times) - 1, int(len(times) * 0.95))], 1),
        "max_ms": round(times[-1], 1),
    }


async def run(args: argparse.Namespace) -> int:
    infra = Infra()
    settings = infra.settings(Settings(http_port=free_port()), f"console-{int(time.time())}")
    settings = await infra.fresh_database(settings, f"console_{int(time.time())}")
    log = Path(tempfile.mkdtemp(prefix="leadscore-console-")) / "service.log"
    process = start_service(settings, log)
    try:
        base = f"http://127.0.0.1:{settings.http_port}"
        async with httpx.AsyncClient(base_url=base, timeout=60) as client:
            deadline = time.monotonic() + 120
            while True:
                try:
                    if (await client.get("/readyz")).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                if time.monotonic() > deadline or process.poll() is not None:
                    raise RuntimeError(f"the service did not start; see {log}")
                await asyncio.sleep(0.2)
            docs = list(
                generate(events=args.events, leads=args.leads, seed=42, recent=True, days=30)
            )
            print(f"scoring {len(docs):,} events from {args.leads:,} people ...", flush=True)
            await produce(settings, docs)
            await wait_committed(settings, len(docs))
            ids = await prepare(client)
            figures = await measure(client, ids, args.repeat)
    finally:
        process.terminate()
        process.wait(60)
        infra.stop()
    worst = max(f["max_ms"] for f in figures.values())
    result = {
        "at": datetime.now(UTC).isoformat(),
        "events": args.events,
        "leads": args.leads,
        "repeat": args.repeat,
        "target_ms": TARGET_MS,
        "pages": figures,
        "slowest_ms": worst,
    }
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / f"console-{datetime.now(UTC):%Y%m%dT%H%M%S}.json"
    out.write_text(json.dumps(result, indent=2))
    print(f"{'page':24} {'p50 ms':>8} {'p95 ms':>8} {'max ms':>8}")
    for name, f in figures.items():
        print(f"{name:24} {f['p50_ms']:8.1f} {f['p95_ms']:8.1f} {f['max_ms']:8.1f}")
    print(f"slowest {worst:.1f} ms (target under {TARGET_MS:.0f} ms); written to {out}")
    return 0 if worst < TARGET_MS else 1


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--leads", type=int, default=20_000)
    parser.add_argument("--repeat", type=int, default=20)
    raise SystemExit(asyncio.run(run(parser.parse_args())))


if __name__ == "__main__":
    main()
