"""Leads, accounts and identity links: loading a batch's working set and saving what changed,
one round trip per table.

Every function here runs inside the caller's transaction and never commits: a batch's state
changes, dedup keys, outbox rows and partition offsets commit together or not at all.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import asyncpg
import orjson

from scoring_service.pipeline import MAX_LINK_HOPS, Workspace
from scoring_service.state import Account, LeadState


def _ts(value: float | None) -> datetime | None:
    return datetime.fromtimestamp(value, UTC) if value is not None else None


def _epoch(value: datetime | None) -> float | None:
    return value.timestamp() if value is not None else None


async def load_links(pg: asyncpg.Connection, ids: Sequence[str]) -> dict[str, str]:
    """Each id's links, followed to the lead it now counts for (migration 0020's function,
    which the lead transactions read them with too)."""
    rows = await pg.fetch("SELECT * FROM leadscore_links($1, $2)", list(ids), MAX_LINK_HOPS)
    return {r["alias_id"]: r["lead_id"] for r in rows}


LEAD_COLUMNS = (
    "lead_id, stage, stage_entered_at, account_id, traits::text AS traits, fit, engagement, "
    "as_of, seq, ruleset_version, scoring::text AS scoring"
)


def lead_from_row(row: Any) -> LeadState:
    state = LeadState(
        lead_id=row["lead_id"],
        stage=row["stage"],
        stage_entered_at=_epoch(row["stage_entered_at"]),
        traits=orjson.loads(row["traits"]),
        account_id=row["account_id"],
        fit=row["fit"],
        engagement=row["engagement"],
        as_of=_epoch(row["as_of"]),
        seq=row["seq"],
        ruleset_version=row["ruleset_version"],
    )
    state.load_doc(orjson.loads(row["scoring"]))
    return state


async def load_leads(
    pg: asyncpg.Connection, ids: Sequence[str], *, table: str = "leads"
) -> dict[str, LeadState]:
    """Leads by id; `table` is `challenger_leads` for a challenger's own state."""
    rows = await pg.fetch(
        f"SELECT {LEAD_COLUMNS} FROM {table} WHERE lead_id = ANY($1::text[])", list(ids)
    )
    return {r["lead_id"]: lead_from_row(r) for r in rows}


ACCOUNT_COLUMNS = (
    "account_id, traits::text AS traits, version, stage, stage_entered_at, seq, as_of, fit, "
    "engagement, coverage, roles_covered, ruleset_version, scoring::text AS scoring"
)


def account_from_row(row: Any) -> Account:
    account = Account(
        account_id=row["account_id"],
        traits=orjson.loads(row["traits"]),
        version=row["version"],
        stage=row["stage"],
        stage_entered_at=_epoch(row["stage_entered_at"]),
        seq=row["seq"],
        as_of=_epoch(row["as_of"]),
        fit=row["fit"],
        engagement=row["engagement"],
        coverage=row["coverage"],
        covered=list(row["roles_covered"]),
        ruleset_version=row["ruleset_version"],
    )
    account.load_doc(orjson.loads(row["scoring"]))
    return account


async def load_accounts(
    pg: asyncpg.Connection, ids: Sequence[str], *, table: str = "accounts"
) -> dict[str, Account]:
    if not ids:
        return {}
    rows = await pg.fetch(
        f"SELECT {ACCOUNT_COLUMNS} FROM {table} WHERE account_id = ANY($1::text[])", list(ids)
    )
    return {r["account_id"]: account_from_row(r) for r in rows}


async def save_workspace(pg: asyncpg.Connection, ws: Workspace) -> dict[str, int]:
    """Write back what a batch changed: leads, merged-away leads, links, accounts. Returns
    the stored versions of the leads written."""
    versions = await save_leads(
        pg, [ws.leads[i] for i in sorted(ws.changed_leads) if i in ws.leads]
    )
    if ws.merged_leads:
        await pg.execute("DELETE FROM leads WHERE lead_id = ANY($1::text[])", list(ws.merged_leads))
    if ws.new_links:
        await pg.execute(
            "INSERT INTO identity_links (alias_id, lead_id, caused_by) "
            "SELECT * FROM unnest($1::text[], $2::text[], $3::text[]) ON CONFLICT DO NOTHING",
            list(ws.new_links),
            list(ws.new_links.values()),
            [ws.link_causes.get(a) for a in ws.new_links],
        )
    accounts = [ws.accounts[i] for i in sorted(ws.changed_accounts) if i in ws.accounts]
    if accounts:
        await save_accounts(pg, accounts)
    return versions


async def save_leads(
    pg: asyncpg.Connection, leads: Sequence[LeadState], *, table: str = "leads"
) -> dict[str, int]:
    """Insert or update the leads, raising each row's version; returns the versions."""
    if not leads:
        return {}
    rows = await pg.fetch(
        f"""
        INSERT INTO {table} (lead_id, stage, stage_entered_at, account_id, traits, fit,
                           engagement, as_of, seq, ruleset_version, scoring, journey_phase)
        SELECT l, s, se, a, t::jsonb, f, e, ao, q, v, sc::json, jp
        FROM unnest($1::text[], $2::text[], $3::timestamptz[], $4::text[], $5::text[],
                    $6::float8[], $7::float8[], $8::timestamptz[], $9::int[], $10::int[],
                    $11::text[], $12::text[]) AS u(l, s, se, a, t, f, e, ao, q, v, sc, jp)
        ON CONFLICT (lead_id) DO UPDATE SET
            stage = EXCLUDED.stage, stage_entered_at = EXCLUDED.stage_entered_at,
            account_id = EXCLUDED.account_id, traits = EXCLUDED.traits,
            fit = EXCLUDED.fit, engagement = EXCLUDED.engagement, as_of = EXCLUDED.as_of,
            seq = EXCLUDED.seq, ruleset_version = EXCLUDED.ruleset_version,
            scoring = EXCLUDED.scoring, journey_phase = EXCLUDED.journey_phase,
            updated_at = now(),
            row_version = {table}.row_version + 1
        RETURNING lead_id, row_version
        """,
        [s.lead_id for s in leads],
        [s.stage for s in leads],
        [_ts(s.stage_entered_at) for s in leads],
        [s.account_id for s in leads],
        [orjson.dumps(s.traits).decode() for s in leads],
        [s.fit for s in leads],
        [s.engagement for s in leads],
        [_ts(s.as_of) for s in leads],
        [s.seq for s in leads],
        [s.ruleset_version for s in leads],
        [orjson.dumps(s.to_doc()).decode() for s in leads],
        [_phase(s) for s in leads],
    )
    return {r["lead_id"]: r["row_version"] for r in rows}


async def save_accounts(
    pg: asyncpg.Connection, accounts: Sequence[Account], *, table: str = "accounts"
) -> None:
    await pg.execute(
        f"""
        INSERT INTO {table} (account_id, traits, version, stage, stage_entered_at, seq, as_of,
                              fit, engagement, coverage, score, roles_covered, member_count,
                              ruleset_version, scoring, journey_phase)
        SELECT a, t::jsonb, v, st, se, q, ao, f, e, c, f + e + c,
               coalesce(string_to_array(nullif(rc, ''), ','), '{{}}'), mc, rv, sc::jsonb, jp
        FROM unnest($1::text[], $2::text[], $3::int[], $4::text[], $5::timestamptz[],
                    $6::int[], $7::timestamptz[], $8::float8[], $9::float8[], $10::float8[],
                    $11::text[], $12::int[], $13::int[], $14::text[], $15::text[])
             AS u(a, t, v, st, se, q, ao, f, e, c, rc, mc, rv, sc, jp)
        ON CONFLICT (account_id) DO UPDATE SET
            traits = EXCLUDED.traits, version = EXCLUDED.version, stage = EXCLUDED.stage,
            stage_entered_at = EXCLUDED.stage_entered_at, seq = EXCLUDED.seq,
            as_of = EXCLUDED.as_of, fit = EXCLUDED.fit, engagement = EXCLUDED.engagement,
            coverage = EXCLUDED.coverage, score = EXCLUDED.score,
            roles_covered = EXCLUDED.roles_covered, member_count = EXCLUDED.member_count,
            ruleset_version = EXCLUDED.ruleset_version, scoring = EXCLUDED.scoring,
            journey_phase = EXCLUDED.journey_phase, updated_at = now()
        """,
        [a.account_id for a in accounts],
        [orjson.dumps(a.traits).decode() for a in accounts],
        [a.version for a in accounts],
        [a.stage for a in accounts],
        [_ts(a.stage_entered_at) for a in accounts],
        [a.seq for a in accounts],
        [_ts(a.as_of) for a in accounts],
        [a.fit for a in accounts],
        [a.engagement for a in accounts],
        [a.coverage for a in accounts],
        # Role ids are [a-z0-9_]: a comma never occurs in one.
        [",".join(a.covered) for a in accounts],
        [len(a.members) for a in accounts],
        [a.ruleset_version for a in accounts],
        [orjson.dumps(a.to_doc()).decode() for a in accounts],
        [_phase(a) for a in accounts],
    )


def _phase(subject: LeadState | Account) -> str | None:
    """The journey phase column (migration 0019): written with the document it comes from."""
    return subject.journey.phase if subject.journey is not None else None


async def lead_ids_after(pg: asyncpg.Connection, after: str, limit: int) -> list[str]:
    """The next `limit` lead ids after `after`, in id order (keyset paging)."""
    rows = await pg.fetch(
        "SELECT lead_id FROM leads WHERE lead_id > $1 ORDER BY lead_id LIMIT $2", after, limit
    )
    return [r["lead_id"] for r in rows]


async def count_leads(pg: asyncpg.Connection) -> int:
    return int(await pg.fetchval("SELECT count(*) FROM leads"))
