"""A challenger version: scored on every live event next to the active one, into its own
state, so a candidate is judged on live traffic and can be activated without a replay.

What the challenger does, and what it does not:
- In every event batch (services/pipeline/consumer.py) the challenger scores the same events, in
  the same transaction, into `challenger_leads` and `challenger_accounts`. Its stage
  changes go to `challenger_transitions` for the outcome report; nothing is published, no
  deadline starts, no one is routed. Sales feedback, deadlines and admins act on the live
  state only: the challenger's stages are what scoring alone would have made.
- A lead the challenger has no state for yet (it existed before the challenger started) is
  warmed first: its stored history is replayed under the challenger. The warm-up job does
  the same for every lead no event touches; `challenger.warmed_at` says it has finished.
- Activating the challenger (POST /v1/rulesets/{v}/activate) makes its state the live one
  in the activation's transaction: every lead takes the challenger's scores, and a lead
  whose stage scoring decides (`lead`, `mql`, `sal`) and differs moves to the challenger's
  stage with a transition, reason `rescore` (routed and timed like any move). Stages sales,
  deadlines or admins decided (`sql` and beyond, `recycled`, `disqualified`) stand.
  Accounts take the challenger's scores and keep their stage (scoring moves them up on the
  next member event).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime

from scoring_service.effects import Effects, Hit
from scoring_service.engine import Engine
from scoring_service.intake import Event
from scoring_service.pipeline import Workspace, note_scores, score_event
from scoring_service.state import Account, LeadState
from services.adapters.postgres import challenger_store, history_store, lead_store, rule_set_store
from services.adapters.postgres.db import Connection
from stage_router.lifecycle import SCORING_STAGES, Move
from stage_router.records import AccountTransitionDoc, TransitionDoc

log = logging.getLogger(__name__)

LEADS = challenger_store.LEADS
ACCOUNTS = challenger_store.ACCOUNTS


class ChallengerRefused(Exception):
    """A challenger request that cannot be honoured now; `code` names why."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass(frozen=True, slots=True)
class Running:
    version: int
    started_by: str
    started_at: datetime
    warmed_at: datetime | None


async def running(pg: Connection) -> Running | None:
    row = await challenger_store.running(pg)
    return Running(**dict(row)) if row else None


warm_progress = challenger_store.warm_progress


async def journey_phases(pg: Connection) -> dict[str, dict[str, int]]:
    """Leads per buyer-journey phase, live and under the challenger (its own state)."""
    rows = await challenger_store.journey_phase_counts(pg)
    phases: dict[str, dict[str, int]] = {}
    for r in rows:
        phases.setdefault(r["phase"], {"live": 0, "challenger": 0})[r["side"]] = r["n"]
    return dict(sorted(phases.items()))


async def start(pg: Connection, version: int, *, by: str) -> None:
    """Make `version` the challenger; run inside a transaction. The exclusive rule-set lock
    waits for batches in flight: every batch after the commit scores with the challenger."""
    await rule_set_store.lock_exclusively(pg)
    if await rule_set_store.active_version(pg) == version:
        raise ChallengerRefused("already_active", f"version {version} is the active version")
    current = await running(pg)
    if current is not None:
        raise ChallengerRefused(
            "challenger_running",
            f"version {current.version} is already the challenger (one at a time); stop it first",
        )
    await challenger_store.begin(pg, version, by=by)


async def stop(pg: Connection, version: int) -> None:
    """Stop the challenger `version` and drop its state (its stage changes stay, for the
    outcome report); run inside a transaction."""
    await rule_set_store.lock_exclusively(pg)
    current = await running(pg)
    if current is None or current.version != version:
        raise ChallengerRefused("not_challenger", f"version {version} is not the challenger")
    await challenger_store.end(pg)


@dataclass(slots=True)
class Shadow:
    """The challenger's working set for one transaction, and the stage changes it made."""

    engine: Engine
    ws: Workspace
    # Per live event scored in this transaction, in order: what the challenger's rules hit.
    hits: list[list[Hit]] = field(default_factory=list)
    transitions: list[TransitionDoc] = field(default_factory=list)
    account_transitions: list[AccountTransitionDoc] = field(default_factory=list)
    errors: int = 0

    def collect(self, effects: Effects) -> None:
        self.transitions.extend(effects.transitions)
        self.account_transitions.extend(effects.account_transitions)

    def score(self, event: Event, now: float) -> None:
        """Score one live event under the challenger. A defect here must not cost the live
        event anything: it is logged and counted, and the challenger misses the event."""
        try:
            effects = score_event(self.ws, self.engine, event, now=now).effects
        except Exception:
            self.hits.append([])
            self.errors += 1
            log.exception(
                "the challenger (version %d) failed on an event", self.engine.rules.version
            )
            return
        self.collect(effects)
        self.hits.append(effects.hits)


async def open_shadow(pg: Connection, engine: Engine, live: Workspace, now: float) -> Shadow:
    """Load the challenger's state for the leads and accounts of the live working set
    (before anything is scored), warming the leads it has none for from their history."""
    ws = Workspace(links=dict(live.links))
    ws.leads = await lead_store.load_leads(pg, list(live.leads), table=LEADS)
    ws.accounts = await lead_store.load_accounts(pg, list(live.accounts), table=ACCOUNTS)
    for account_id, account in live.accounts.items():
        if account_id not in ws.accounts:
            # Traits are the live ones; the score is built as members are scored.
            ws.accounts[account_id] = Account(account_id, dict(account.traits), account.version)
            ws.changed_accounts.add(account_id)
    shadow = Shadow(engine, ws)
    missing = [lead_id for lead_id in live.leads if lead_id not in ws.leads]
    if missing:
        await _warm(pg, shadow, missing, now)
    return shadow


async def _warm(pg: Connection, shadow: Shadow, lead_ids: list[str], now: float) -> None:
    """Replay each lead's stored history under the challenger, from an empty start."""
    history = await history_store.load_history(pg, lead_ids)
    ws, engine = shadow.ws, shadow.engine
    replayed: list[tuple[int, list[Hit]]] = []
    for lead_id in lead_ids:
        state = LeadState(lead_id=lead_id)
        for row_id, event in history.get(lead_id, []):
            account_id = event.group_id if event.type == "group" else state.account_id
            account = ws.accounts.get(account_id or "")
            try:
                effects = engine.apply_event(state, event, account, now=now)
            except Exception:
                shadow.errors += 1
                log.exception("the challenger failed replaying lead %r", lead_id)
                continue
            shadow.collect(effects)
            replayed.append((row_id, effects.hits))
        ws.leads[lead_id] = state
        ws.changed_leads.add(lead_id)
    await history_store.save_challenger_hits(pg, replayed)


async def save_shadow(pg: Connection, shadow: Shadow) -> None:
    """Write what the challenger changed: its lead and account state, its stage changes."""
    ws, version = shadow.ws, shadow.engine.rules.version
    if shadow.engine.accounts is not None:
        ws.note_member_accounts()
    note_scores(ws, shadow.engine)
    await lead_store.save_leads(
        pg, [ws.leads[i] for i in sorted(ws.changed_leads) if i in ws.leads], table=LEADS
    )
    if ws.merged_leads:
        await challenger_store.forget_leads(pg, sorted(ws.merged_leads))
    accounts = [ws.accounts[i] for i in sorted(ws.changed_accounts) if i in ws.accounts]
    if accounts:
        await lead_store.save_accounts(pg, accounts, table=ACCOUNTS)
    if shadow.transitions:
        await challenger_store.save_transitions(pg, version, shadow.transitions)
    if shadow.account_transitions:
        await challenger_store.save_account_transitions(pg, version, shadow.account_transitions)


async def promote(pg: Connection, engine: Engine, *, now: float) -> tuple[Effects, int]:
    """Make the challenger's state the live one (see the module docstring). Run inside the
    activation's transaction, after the exclusive rule-set lock: no writer runs meanwhile.
    `engine` is the challenger's; returns the moves' effects and how many leads took the
    challenger's scores."""
    version = engine.rules.version
    current = await running(pg)
    if current is None or current.version != version:
        raise ChallengerRefused("not_challenger", f"version {version} is not the challenger")
    if current.warmed_at is None:
        warm, total = await warm_progress(pg)
        raise ChallengerRefused(
            "challenger_warming",
            f"the challenger is still replaying the leads that existed when it started "
            f"({warm} of {total} leads); activate it when its warm-up job has finished",
        )
    # A challenger's activation changes the stages scoring decides, and no others.
    moving = await challenger_store.leads_at_another_stage(pg, SCORING_STAGES)
    taken = await challenger_store.take_over_scores(pg, version)
    effects = Effects()
    if moving:
        live = await lead_store.load_leads(pg, moving)
        theirs = await lead_store.load_leads(pg, moving, table=LEADS)
        accounts = await lead_store.load_accounts(
            pg, sorted({s.account_id for s in live.values() if s.account_id})
        )
        for lead_id in moving:
            state = live[lead_id]
            engine.move(
                state,
                Move(theirs[lead_id].stage, "rescore"),
                effects,
                caused_by=None,
                occurred_at=now,
                account=accounts.get(state.account_id or ""),
                now=now,
            )
        await lead_store.save_leads(pg, [live[i] for i in moving])
    await challenger_store.end(pg)
    return effects, taken


async def lead_state(pg: Connection, lead_id: str) -> LeadState | None:
    return (await lead_store.load_leads(pg, [lead_id], table=LEADS)).get(lead_id)


async def account_states(pg: Connection, ids: Sequence[str]) -> dict[str, Account]:
    return await lead_store.load_accounts(pg, ids, table=ACCOUNTS)
