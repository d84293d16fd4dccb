"""One quarterly review, end to end, on a generated history (`make review-demo`).

A service process scores four months of generated traffic under the starter rules. Sales
outcomes are then planted: each lead handed off is won with odds that depend on what it did
before the handoff, by known weights (webinars and email replies matter, pricing visits do
not, the careers page hurts; decision-makers are likelier buyers). The feedback goes through
the `sales-feedback` topic like a CRM's. Then the review runs with the command line, as an
admin would: the outcome report, a proposed version fitted to the outcomes, that version as
a challenger next to the active one, the side-by-side report, and the activation.

Everything said is printed (and saved under bench/results/), with the commands that said it.
docs/guides/review.md quotes one run.
"""

from __future__ import annotations

import asyncio
import math
import os
import random
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta

import asyncpg
import httpx
import orjson
from aiokafka import AIOKafkaProducer

from bench.harness import Infra, start_service
from bench.run import RESULTS, ROOT, produce_all, wait_drained, wait_ready
from bench.workload import generate
from services.adapters.kafka import ensure_topics
from services.runtime.embedded import free_port
from services.settings import Settings

DAYS = 120
# The truth the outcomes are drawn from: log-odds of a win per counted hit before the
# handoff (engagement rules) or for matching (fit rules).
PLANTED = {
    "webinar": 0.8,
    "email-reply": 0.6,
    "content-download": 0.3,
    "pricing-page": 0.0,
    "email-click": -0.1,
    "careers-page": -0.9,
    "decision-maker": 1.0,
}
INTERCEPT = -1.8
HANDOFFS = """
WITH handoff AS (
    SELECT DISTINCT ON (lead_id) lead_id, occurred_at AS at
    FROM transitions
    WHERE from_stage IN ('lead', 'recycled') AND to_stage IN ('mql', 'sal', 'sql')
    ORDER BY lead_id, occurred_at
)
SELECT h.lead_id, h.at, l.stage, (l.scoring -> 'fit_rules')::text AS fit,
       (SELECT coalesce(json_object_agg(rule_id, n), '{}')::text FROM (
            SELECT x.value ->> 0 AS rule_id, count(*) AS n
            FROM lead_events e, json_array_elements(e.hits) AS x
            WHERE e.lead_id = h.lead_id AND e.occurred_at <= h.at AND (x.value ->> 2)::boolean
            GROUP BY 1) s) AS hits
FROM handoff h JOIN leads l USING (lead_id)
ORDER BY h.lead_id
"""
# The outcomes sales records from each stage on, good and bad, with days after the handoff.
GOOD = [("accepted", 0.1), ("qualified", 2), ("converted", 9), ("won", 28)]
BAD = [("accepted", 0.1), ("qualified", 3), ("converted", 12), ("lost", 35)]
REJECTED = [("accepted", 0.1), ("rejected", 1)]
FIRST = {"mql": 0, "sal": 1, "sql": 2, "opportunity": 3}


def outcomes_for(
    stage: str, hits: dict[str, float], fit: list[str], rnd: random.Random
) -> list[tuple[str, float]]:
    odds = INTERCEPT + sum(PLANTED.get(r, 0.0) * min(n, 5) for r, n in hits.items())
    odds += sum(PLANTED.get(r, 0.0) for r in fit)
    won = rnd.random() < 1 / (1 + math.exp(-odds))
    chain = GOOD if won else (REJECTED if rnd.random() < 0.4 else BAD)
    return chain[FIRST[stage] :] if stage in FIRST else []


async def plant_outcomes(settings: Settings) -> int:
    """Feedback for every lead handed off, on the feedback topic; returns how many records."""
    assert settings.database_url is not None
    pg = await asyncpg.connect(settings.database_url.get_secret_value().replace("+asyncpg", ""))
    try:
        rows = await pg.fetch(HANDOFFS)
    finally:
        await pg.close()
    rnd = random.Random(2026)
    now = datetime.now(UTC)
    producer = AIOKafkaProducer(bootstrap_servers=settings.kafka_bootstrap, linger_ms=20)
    await producer.start()
    sent = 0
    try:
        for row in rows:
            chain = outcomes_for(
                row["stage"], orjson.loads(row["hits"]), orjson.loads(row["fit"] or "[]"), rnd
            )
            for n, (outcome, days) in enumerate(chain):
                at = min(row["at"] + timedelta(days=days), now - timedelta(minutes=10 - n))
                record = {
                    "feedback_id": f"crm-{row['lead_id']}-{n}",
                    "lead_id": row["lead_id"],
                    "outcome": outcome,
                    "at": at.isoformat(),
                    **({"reason": "no budget this year"} if outcome == "rejected" else {}),
                }
                await producer.send(
                    settings.topic_feedback, orjson.dumps(record), key=row["lead_id"].encode()
                )
                sent += 1
        await producer.flush()
    finally:
        await producer.stop()
    return sent


async def wait_feedback(settings: Settings, count: int) -> None:
    assert settings.database_url is not None
    pg = await asyncpg.connect(settings.database_url.get_secret_value().replace("+asyncpg", ""))
    try:
        deadline = time.monotonic() + 300
        while await pg.fetchval("SELECT count(*) FROM feedback") < count:
            if time.monotonic() > deadline:
                raise TimeoutError("the feedback was not all applied")
            await asyncio.sleep(0.2)
    finally:
        await pg.close()


def leadscore(transcript: list[str], url: str, *args: str) -> str:
    """Run the command line as an admin would, and keep what it said."""
    shown = " ".join(a if " " not in a else f"'{a}'" for a in args)
    result = subprocess.run(
        [sys.executable, "-m", "services.runtime.cli", *args],
        cwd=ROOT,
        env={**os.environ, "LEADSCORE_API_URL": url},
        capture_output=True,
        text=True,
        check=False,
    )
    transcript += [f"$ leadscore {shown}", (result.stdout + result.stderr).rstrip(), ""]
    print("\n".join(transcript[-3:]), flush=True)
    if result.returncode:
        raise RuntimeError(f"leadscore {shown} failed")
    return result.stdout


async def run() -> int:
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S")
    infra = Infra()
    settings = (
        await infra.fresh_database(infra.settings(Settings(), f"review-{stamp}"), "review_demo")
    ).with_changes(http_port=free_port())
    await ensure_topics(settings)
    transcript = [f"# leadscore review demo, {stamp}", ""]
    service = None
    try:
        docs = list(
            generate(events=80_000, leads=5_000, seed=3, recent=True, days=DAYS, accounts=500)
        )
        await produce_all(settings, docs, "history")
        service = start_service(settings, RESULTS / f"review-demo-{stamp}.log")
        await wait_ready(settings.http_port, service)
        await wait_drained(settings, len(docs), "scoring the history")
        sent = await plant_outcomes(settings)
        await wait_feedback(settings, sent)
        transcript += [f"({len(docs):,} events over {DAYS} days; {sent:,} feedback records)", ""]
        url = f"http://127.0.0.1:{settings.http_port}"
        since = (datetime.now(UTC) - timedelta(days=DAYS + 1)).replace(microsecond=0)
        window = ["--since", since.isoformat()]
        leadscore(transcript, url, "review", *window)
        leadscore(transcript, url, "propose", "1", *window, "--seed", "7")
        leadscore(transcript, url, "challenge", "2")
        async with httpx.AsyncClient(base_url=url) as client:
            deadline = time.monotonic() + 600
            while not (await client.get("/v1/challenger")).json()["warmed_at"]:
                if time.monotonic() > deadline:
                    raise TimeoutError("the challenger did not warm up")
                await asyncio.sleep(0.5)
        leadscore(transcript, url, "review", "--version", "2", *window)
        leadscore(transcript, url, "rules", "activate", "2")
    finally:
        if service is not None and service.poll() is None:
            service.terminate()
            service.wait(30)
        infra.stop()
    path = RESULTS / f"review-demo-{stamp}.txt"
    path.write_text("\n".join(transcript) + "\n")
    print(f"saved {path}")
    return 0


def main() -> None:
    sys.exit(asyncio.run(run()))


if __name__ == "__main__":
    main()
