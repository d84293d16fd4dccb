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

import asyncpg
import orjson

from scoring_service.engine import Effects, Engine, Hit
from scoring_service.intake import Event
from scoring_service.pipeline import Workspace, note_scores, score_event
from scoring_service.state import Account, LeadState
from services.adapters.postgres import history_store, lead_store
from services.adapters.postgres.rulesets import RULESET_LOCK, active_version
from stage_router.lifecycle import Move
from stage_router.records import AccountTransitionDoc, TransitionDoc

log = logging.getLogger(__name__)

LEADS = "challenger_leads"
ACCOUNTS = "challenger_accounts"
# Live stages scoring decides; a challenger's activation may change these and no others.
SCORING_STAGES = ("lead", "mql", "sal")


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


async def running(pg: asyncpg.Connection) -> Running | None:
    row = await pg.fetchrow(
        "SELECT version, started_by, started_at, warmed_at FROM challenger WHERE id = 1"
    )
    return Running(**dict(row)) if row else None


async def warm_progress(pg: asyncpg.Connection) -> tuple[int, int]:
    """(leads with challenger state, live leads)."""
    row = await pg.fetchrow(
        f"SELECT (SELECT count(*) FROM {LEADS}) AS warm, (SELECT count(*) FROM leads) AS live"
    )
    assert row is not None
    return int(row["warm"]), int(row["live"])


async def journey_phases(pg: asyncpg.Connection) -> dict[str, dict[str, int]]:
    """Leads per buyer-journey phase, live and under the challenger (its own state)."""
    rows = await pg.fetch(
        "SELECT 'live' AS side, journey_phase AS phase, count(*) AS n FROM leads "
        "WHERE journey_phase IS NOT NULL GROUP BY 2 "
        f"UNION ALL SELECT 'challenger', journey_phase, count(*) FROM {LEADS} "
        "WHERE journey_phase IS NOT NULL GROUP BY 2"
    )
    phases: dict[str, dict[str, int]] = {}
    for r in rows:
        phases.setdefault(r["phase"], {"live": 0, "challenger": 0})[r["side"]] = r["n"]
    return dict(sorted(phases.items()))


async def _clear_state(pg: asyncpg.Connection) -> None:
    await pg.execute(f"DELETE FROM {LEADS}")
    await pg.execute(f"DELETE FROM {ACCOUNTS}")


async def start(pg: asyncpg.Connection, version: int, *, by: str) -> None:
    """Make `version` the challenger; run inside a transaction. The exclusive rule-set lock
    waits for batches in flight: every batch after the commit scores with the challenger."""
    await pg.execute("SELECT pg_advisory_xact_lock($1)", RULESET_LOCK)
    if await active_version(pg) == version:
        raise ChallengerRefused("already_active", f"version {version} is the active version")
    current = await running(pg)
    if current is not None:
        raise ChallengerRefused(
            "challenger_running",
            f"version {current.version} is already the challenger (one at a time); stop it first",
        )
    await _clear_state(pg)
    # A run before this one (of any version) left its hits on the history.
    await pg.execute(
        "UPDATE lead_events SET challenger_hits = NULL WHERE challenger_hits IS NOT NULL"
    )
    # A second run of the same version starts its record of stage changes afresh.
    await pg.execute("DELETE FROM challenger_transitions WHERE ruleset_version = $1", version)
    await pg.execute(
        "DELETE FROM challenger_account_transitions WHERE ruleset_version = $1", version
    )
    await pg.execute(
        "INSERT INTO challenger (id, version, started_by) VALUES (1, $1, $2)", version, by
    )


async def stop(pg: asyncpg.Connection, version: int) -> None:
    """Stop the challenger `version` and drop its state (its stage changes stay, for the
    outcome report); run inside a transaction."""
    await pg.execute("SELECT pg_advisory_xact_lock($1)", RULESET_LOCK)
    current = await running(pg)
    if current is None or current.version != version:
        raise ChallengerRefused("not_challenger", f"version {version} is not the challenger")
    await pg.execute("DELETE FROM challenger WHERE id = 1")
    await _clear_state(pg)


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


async def open_shadow(
    pg: asyncpg.Connection, engine: Engine, live: Workspace, now: float
) -> Shadow:
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


async def _warm(pg: asyncpg.Connection, shadow: Shadow, lead_ids: list[str], now: float) -> None:
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


async def save_shadow(pg: asyncpg.Connection, shadow: Shadow) -> None:
    """Write what the challenger changed: its lead and account state, its stage changes."""
    ws, version = shadow.ws, shadow.engine.rules.version
    if shadow.engine.accounts is not None:
        ws.note_member_accounts()
    note_scores(ws, shadow.engine)
    await lead_store.save_leads(
        pg, [ws.leads[i] for i in sorted(ws.changed_leads) if i in ws.leads], table=LEADS
    )
    if ws.merged_leads:
        await pg.execute(
            f"DELETE FROM {LEADS} WHERE lead_id = ANY($1::text[])", list(ws.merged_leads)
        )
    accounts = [ws.accounts[i] for i in sorted(ws.changed_accounts) if i in ws.accounts]
    if accounts:
        await lead_store.save_accounts(pg, accounts, table=ACCOUNTS)
    if shadow.transitions:
        t = shadow.transitions
        await pg.execute(
            """
            INSERT INTO challenger_transitions (transition_id, lead_id, from_stage, to_stage,
                reason, rule_id, ruleset_version, score_total, occurred_at, record)
            SELECT $9::int || ':' || i, l, f, s, r, ru, $9::int, sc, o, rec::jsonb
            FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[],
                        $6::text[], $7::float8[], $8::timestamptz[], $10::text[])
                 AS u(i, l, f, s, r, ru, sc, o, rec)
            ON CONFLICT DO NOTHING
            """,
            [x["transition_id"] for x in t],
            [x["lead_id"] for x in t],
            [x["from_stage"] for x in t],
            [x["to_stage"] for x in t],
            [x["reason"] for x in t],
            [x["rule_id"] for x in t],
            [x["score"]["total"] for x in t],
            [datetime.fromisoformat(x["occurred_at"]) for x in t],
            version,
            # What the review per score reads, in the live records' shape.
            [
                orjson.dumps({"qualified_by": x["qualified_by"], "scores": x["scores"]}).decode()
                for x in t
            ],
        )
    if shadow.account_transitions:
        a = shadow.account_transitions
        await pg.execute(
            """
            INSERT INTO challenger_account_transitions (transition_id, account_id, from_stage,
                to_stage, reason, ruleset_version, score_total, occurred_at)
            SELECT $7::int || ':' || i, ac, f, s, r, $7::int, sc, o
            FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[],
                        $6::float8[], $8::timestamptz[]) AS u(i, ac, f, s, r, sc, o)
            ON CONFLICT DO NOTHING
            """,
            [x["transition_id"] for x in a],
            [x["account_id"] for x in a],
            [x["from_stage"] for x in a],
            [x["to_stage"] for x in a],
            [x["reason"] for x in a],
            [x["score"]["total"] for x in a],
            version,
            [datetime.fromisoformat(x["occurred_at"]) for x in a],
        )


async def promote(pg: asyncpg.Connection, engine: Engine, *, now: float) -> tuple[Effects, int]:
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
    moving = [
        r["lead_id"]
        for r in await pg.fetch(
            f"SELECT l.lead_id FROM leads l JOIN {LEADS} c USING (lead_id) "
            "WHERE l.stage <> c.stage AND l.stage = ANY($1::text[]) ORDER BY l.lead_id",
            list(SCORING_STAGES),
        )
    ]
    taken = await pg.execute(
        f"UPDATE leads l SET fit = c.fit, engagement = c.engagement, as_of = c.as_of, "
        f"scoring = c.scoring, journey_phase = c.journey_phase, "
        f"ruleset_version = c.ruleset_version, updated_at = now(), "
        # Every write of a lead row raises its version (migration 0015: cached copies).
        f"row_version = l.row_version + 1 "
        f"FROM {LEADS} c WHERE c.lead_id = l.lead_id"
    )
    await pg.execute(
        f"UPDATE accounts a SET fit = c.fit, engagement = c.engagement, coverage = c.coverage, "
        f"score = c.score, roles_covered = c.roles_covered, member_count = c.member_count, "
        f"as_of = c.as_of, scoring = c.scoring, journey_phase = c.journey_phase, "
        f"ruleset_version = c.ruleset_version, "
        f"updated_at = now() FROM {ACCOUNTS} c WHERE c.account_id = a.account_id"
    )
    # The history explains the new scores: each event's hits become the challenger's.
    await pg.execute(
        "UPDATE lead_events SET hits = challenger_hits, ruleset_version = $1, "
        "points = (SELECT coalesce(sum((h ->> 1)::float8), 0) "
        "          FROM json_array_elements(challenger_hits) AS h), "
        "challenger_hits = NULL WHERE challenger_hits IS NOT NULL",
        version,
    )
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
    await pg.execute("DELETE FROM challenger WHERE id = 1")
    await _clear_state(pg)
    return effects, int(taken.split()[-1])


async def lead_state(pg: asyncpg.Connection, lead_id: str) -> LeadState | None:
    return (await lead_store.load_leads(pg, [lead_id], table=LEADS)).get(lead_id)


async def account_states(pg: asyncpg.Connection, ids: Sequence[str]) -> dict[str, Account]:
    return await lead_store.load_accounts(pg, ids, table=ACCOUNTS)
