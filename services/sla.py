"""Follow-up deadlines: a lead handed to sales and left unanswered past `respond_by` gets one
`sla_breach` notification and, when the rule set says so, goes back to marketing.

Deadlines live in PostgreSQL, so they survive restarts; each check claims due deadlines
with FOR UPDATE SKIP LOCKED and marks them breached in the same transaction as the
notification it writes, so with any number of instances each breach is emitted once.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

import asyncpg
from sqlalchemy.ext.asyncio import AsyncEngine

from scoring_service import store
from scoring_service.consumer import EventConsumer
from scoring_service.engine import Effects
from scoring_service.pipeline import Workspace
from services.db import driver
from services.metrics import Metrics
from services.settings import Settings
from stage_router import records

log = logging.getLogger(__name__)
# Deadlines handled per transaction; more wait for the next pass, moments later.
CHECK_BATCH = 500


class SlaWatcher:
    def __init__(
        self,
        *,
        settings: Settings,
        db: AsyncEngine,
        scorer: EventConsumer,
        metrics: Metrics,
        on_commit: Callable[[], None] = lambda: None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.settings = settings
        self.db = db
        self.scorer = scorer
        self.metrics = metrics
        self.on_commit = on_commit
        self.clock = clock

    async def check_once(self) -> int:
        """Handle the deadlines due by now; returns how many breached."""
        now = self.clock()
        async with self.db.connect() as conn:
            pg = await driver(conn)
            async with pg.transaction():
                engine = await self.scorer.engine_for(pg)
                due = await pg.fetch(
                    "SELECT transition_id, lead_id, stage, owner, respond_by FROM handoffs "
                    "WHERE status = 'open' AND respond_by <= to_timestamp($1) "
                    "ORDER BY respond_by LIMIT $2 FOR UPDATE SKIP LOCKED",
                    now,
                    CHECK_BATCH,
                )
                if not due:
                    return 0
                named = {r["lead_id"] for r in due}
                await store.lock_keys(pg, [f"l:{i}" for i in named])
                ws = Workspace(links=await store.load_links(pg, list(named)))
                ws.leads = await store.load_leads(pg, [ws.canonical(i) for i in named])
                ws.accounts = await store.load_accounts(
                    pg, [s.account_id for s in ws.leads.values() if s.account_id]
                )
                effects = Effects()
                for row in due:
                    state = ws.leads.get(ws.canonical(row["lead_id"]))
                    if state is None:
                        continue  # the lead is gone; nothing to tell sales about
                    account = ws.accounts.get(state.account_id or "")
                    account_traits = account.traits if account else None
                    respond_by = row["respond_by"].timestamp()
                    effects.notifications.append(
                        records.breach_record(
                            handoff_transition_id=row["transition_id"],
                            lead_id=state.lead_id,
                            stage=row["stage"],
                            score=records.score_doc(state.fit, state.engagement),
                            signals=engine.top_signals(state),
                            profile_doc=records.profile(state.traits, account_traits),
                            owner=engine.rules.escalation_owner or row["owner"],
                            respond_by=respond_by,
                            ruleset_version=engine.rules.version,
                        )
                    )
                    expiry = engine.expire(
                        state, stage=row["stage"], at=respond_by, account=account, now=now
                    )
                    if expiry.transitions:
                        ws.changed_leads.add(state.lead_id)
                        effects.extend(expiry)
                await pg.execute(
                    "UPDATE handoffs SET status = 'breached', breached_at = to_timestamp($2) "
                    "WHERE transition_id = ANY($1::text[])",
                    [r["transition_id"] for r in due],
                    now,
                )
                await store.save_workspace(pg, ws)
                rows = await store.record_effects(
                    pg,
                    effects,
                    queues=engine.rules.queues,
                    transitions_topic=self.settings.topic_transitions,
                    notifications_topic=self.settings.topic_notifications,
                )
                await store.enqueue(pg, rows)
        for row in due:
            self.metrics.sla_breaches.labels(row["stage"]).inc()
        self.metrics.count_records(effects.transitions, effects.notifications)
        self.on_commit()
        return len(due)

    async def update_gauge(self) -> None:
        async with self.db.connect() as conn:
            pending = await (await driver(conn)).fetchval(
                "SELECT count(*) FROM handoffs WHERE status = 'open'"
            )
        self.metrics.open_handoffs.set(pending)

    async def run(self, stop: asyncio.Event) -> None:
        """Check every `sla_check_seconds` until `stop`."""
        while not stop.is_set():
            try:
                while await self.check_once() >= CHECK_BATCH:
                    pass  # a backlog of due deadlines: keep going
                await self.update_gauge()
            except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
                log.warning("checking follow-up deadlines failed (%s); trying again", exc)
            try:
                await asyncio.wait_for(stop.wait(), timeout=self.settings.sla_check_seconds)
            except TimeoutError:
                pass
