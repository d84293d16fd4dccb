"""Follow-up deadlines: a lead handed to sales and left unanswered past `respond_by` gets one
`sla_breach` notification and, when the rule set says so, goes back to marketing.

Deadlines live in PostgreSQL, so they survive restarts. Each check is a lead transaction
(services/pipeline/lead_transaction.py): it locks the leads of the due deadlines in the global
order, then marks the deadlines still open breached in the same transaction as the notification
it writes, so with any number of instances each breach is emitted once. The watcher never
holds a handoff row while waiting for a lead: a writer holding that lead and waiting for the
handoff row would deadlock with it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

from scoring_service.lead_scores import lead_label
from services.adapters.postgres import record_store
from services.adapters.postgres.db import connection
from services.adapters.postgres.errors import DATABASE_ERROR, UNAVAILABLE
from services.adapters.postgres.rule_set_store import VersionUnusable
from services.pipeline.lead_transaction import LeadTransaction, LeadWriter
from services.settings import Settings
from stage_router import records

log = logging.getLogger(__name__)
# Deadlines handled per transaction; more wait for the next pass, moments later.
CHECK_BATCH = 500


class DeadlineWatcher:
    def __init__(
        self,
        *,
        settings: Settings,
        writer: LeadWriter,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.settings = settings
        self.writer = writer
        self.db = writer.db
        self.metrics = writer.metrics
        self.clock = clock

    async def check_once(self) -> int:
        """Handle the deadlines due by now; returns how many breached."""
        now = self.clock()
        breached = await self.writer.run(
            lambda tx: self._breach_due(tx), writer="deadlines", now=now
        )
        for stage in breached:
            self.metrics.sla_breaches.labels(stage).inc()
        return len(breached)

    async def _breach_due(self, tx: LeadTransaction) -> list[str]:
        """In the lead transaction: find due deadlines without locking them, lock their
        leads (step 3 of the lock order), then take the ones still open (another instance
        may have handled some meanwhile). Returns the stages of the deadlines breached."""
        candidates = await record_store.leads_with_due_handoffs(tx.pg, tx.now, CHECK_BATCH)
        if not candidates:
            return []
        ws = await tx.lock_leads(set(candidates))
        due = await record_store.breach_due_handoffs(tx.pg, tx.now, candidates)
        engine = tx.engine
        for row in sorted(due, key=lambda r: (r["respond_by"], r["transition_id"])):
            state = ws.leads.get(ws.canonical(row["lead_id"]))
            if state is None:
                continue  # the lead is gone; nothing to tell sales about
            account = ws.accounts.get(state.account_id or "")
            account_traits = account.traits if account else None
            respond_by = row["respond_by"].timestamp()
            score, signals = engine.explain(state)
            entries = engine.score_entries(state)
            tx.effects.notifications.append(
                records.breach_record(
                    handoff_transition_id=row["transition_id"],
                    lead_id=state.lead_id,
                    stage=row["stage"],
                    score=score,
                    signals=signals,
                    profile_doc=records.profile(state.traits, account_traits),
                    owner=engine.rules.escalation_owner or row["owner"],
                    respond_by=respond_by,
                    ruleset_version=engine.rules.version,
                    journey_phase=state.journey.phase if state.journey is not None else None,
                    committee_role=state.committee_role if engine.accounts is not None else None,
                    account_score=(
                        records.account_score_doc(
                            account.fit, account.engagement, account.coverage
                        )["total"]
                        if engine.accounts is not None and account is not None
                        else None
                    ),
                    scores=entries,
                    label=lead_label(entries),
                    signals_by_score=engine.named_explanations(state),
                )
            )
            expiry = engine.expire(
                state, stage=row["stage"], at=respond_by, account=account, now=tx.now
            )
            if expiry.transitions:
                ws.changed_leads.add(state.lead_id)
                tx.effects.extend(expiry)
        return [r["stage"] for r in due]

    async def update_gauge(self) -> None:
        async with connection(self.db) as pg:
            pending = await record_store.count_open_handoffs(pg)
        self.metrics.open_handoffs.set(pending)

    async def run(self, stop: asyncio.Event) -> None:
        """Check every `sla_check_seconds` until `stop`."""
        while not stop.is_set():
            try:
                while await self.check_once() >= CHECK_BATCH:
                    pass  # a backlog of due deadlines: keep going
                await self.update_gauge()
            except (*UNAVAILABLE, DATABASE_ERROR) as exc:
                log.warning("checking follow-up deadlines failed (%s); trying again", exc)
            except VersionUnusable as exc:
                # Readiness and the consumer say so; deadlines wait for a version that runs.
                log.debug("follow-up deadlines wait: %s", exc)
            try:
                await asyncio.wait_for(stop.wait(), timeout=self.settings.sla_check_seconds)
            except TimeoutError:
                pass
