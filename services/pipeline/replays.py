"""Jobs that replay stored history: re-scoring on activation and impact reports.

Both walk the leads in chunks (keyset order), so memory stays bounded and live scoring,
which shares the event loop and the database, keeps going between chunks.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from sqlalchemy.ext.asyncio import AsyncEngine

from scoring_service.effects import Hit
from scoring_service.simulation import ImpactReport, replay_lead
from services.adapters.postgres import challenger_store, history_store, lead_store
from services.adapters.postgres.db import connection
from services.adapters.postgres.rule_set_store import active_version
from services.pipeline import challenger
from services.pipeline.active_rules import ActiveRules
from services.pipeline.jobs import JobContext, JobFailed
from services.pipeline.lead_transaction import LeadTransaction, LeadWriter

# Leads per transaction: small enough that a chunk holds its locks for milliseconds.
RESCORE_CHUNK = 100
IMPACT_CHUNK = 500
# After each chunk the impact job rests as long as the chunk took: it then uses at most about
# half of the process, and live scoring keeps the rest (docs/performance/index.md has the
# measured factor).
IMPACT_REST_RATIO = 1.0


async def rescore_all(ctx: JobContext, *, writer: LeadWriter, version: int) -> dict[str, Any]:
    """Recompute every lead under `version`; leads that now cross a threshold move forward."""
    async with connection(writer.db) as pg:
        await ctx.set_total(await lead_store.count_leads(pg))
    moved = 0
    last = ""

    async def chunk(tx: LeadTransaction) -> tuple[list[str], int]:
        """One chunk of leads in a lead transaction: locked (the same locks the consumer
        takes: events for these leads wait, then build on the re-scored state), replayed."""
        if tx.engine.rules.version != version:
            raise JobFailed(f"version {tx.engine.rules.version} was activated meanwhile; stopped")
        ids = await lead_store.lead_ids_after(tx.pg, last, RESCORE_CHUNK)
        if not ids:
            return ids, 0
        ws = await tx.lock_leads(ids)
        history = await history_store.load_history(tx.pg, ids)
        rewritten: list[tuple[int, list[Hit]]] = []
        for lead_id in ids:
            state = ws.leads.get(lead_id)
            if state is None:
                continue  # merged into another lead since the chunk was listed
            account = ws.accounts.get(state.account_id or "")
            stored = history.get(lead_id, [])
            hits_by_event: list[list[Hit]] = []
            tx.effects.extend(
                tx.engine.rescore(
                    state,
                    [event for _, event in stored],
                    account,
                    now=tx.now,
                    hits_by_event=hits_by_event,
                )
            )
            rewritten.extend(zip((row_id for row_id, _ in stored), hits_by_event, strict=True))
            ws.changed_leads.add(lead_id)
        await history_store.rewrite_history_hits(tx.pg, version, rewritten)
        return ids, len(tx.effects.transitions)

    while True:
        ids, chunk_moved = await writer.run(chunk, writer="rescore")
        if not ids:
            break
        moved += chunk_moved
        await ctx.advance(len(ids))
        last = ids[-1]
        await asyncio.sleep(0)  # let live scoring in between chunks
    return {"version": version, "leads": ctx.done, "moved": moved}


async def impact_report(
    ctx: JobContext, *, db: AsyncEngine, rules: ActiveRules, candidate: int, days: float
) -> dict[str, Any]:
    """Replay the last `days` of history under the active and the candidate version."""
    now = time.time()
    async with connection(db) as pg:
        current = await active_version(pg)
        if current is None:
            raise JobFailed("no active rule set")
        active_engine = await rules.engine_for(pg, current)
        candidate_engine = await rules.engine_for(pg, candidate)
        since = await history_store.days_ago(pg, days)
        await ctx.set_total(await history_store.count_leads_with_history(pg, since))
    report = ImpactReport(current, candidate)
    last = ""
    while True:
        chunk_started = time.perf_counter()
        async with connection(db) as pg:
            ids = await history_store.leads_with_history_after(pg, since, last, IMPACT_CHUNK)
            if not ids:
                break
            history = await history_store.load_history(pg, ids, since)
            leads = await lead_store.load_leads(pg, ids)
            accounts = await lead_store.load_accounts(
                pg, [s.account_id for s in leads.values() if s.account_id]
            )
        for lead_id in ids:
            account = accounts.get(leads[lead_id].account_id or "") if lead_id in leads else None
            events = [event for _, event in history.get(lead_id, [])]
            report.add(
                lead_id,
                replay_lead(active_engine, lead_id, events, account, now=now),
                replay_lead(candidate_engine, lead_id, events, account, now=now),
                account,
            )
            await asyncio.sleep(0)  # one lead at a time, then live scoring gets a turn
        await ctx.advance(len(ids))
        last = ids[-1]
        await asyncio.sleep((time.perf_counter() - chunk_started) * IMPACT_REST_RATIO)
    report.judge_accounts(active_engine, candidate_engine)
    result = report.to_dict()
    result["days"] = days
    return result


async def warm_challenger(ctx: JobContext, *, writer: LeadWriter, version: int) -> dict[str, Any]:
    """Replay every lead the challenger has no state for under it, in lead transactions (the
    consumer's locks: a lead's events wait, then find it warm), then mark it warmed."""
    async with connection(writer.db) as pg:
        await ctx.set_total(await lead_store.count_leads(pg))
    last = ""

    async def chunk(tx: LeadTransaction) -> list[str]:
        if tx.challenger is None or tx.challenger.rules.version != version:
            raise JobFailed(f"version {version} is no longer the challenger; stopped")
        ids = await lead_store.lead_ids_after(tx.pg, last, RESCORE_CHUNK)
        if ids:
            ws = await tx.lock_leads(ids)
            tx.shadow = await challenger.open_shadow(tx.pg, tx.challenger, ws, tx.now)
        else:
            await challenger_store.mark_warmed(tx.pg, version)
        return ids

    while True:
        ids = await writer.run(chunk, writer="challenger-warm-up")
        if not ids:
            break
        await ctx.advance(len(ids))
        last = ids[-1]
        await asyncio.sleep(0)
    return {"version": version, "leads": ctx.done}
