"""What the service holds on one person, found by any of their ids or their e-mail address:
the rows a right-of-access export is made of (services/app/people.py)."""

from __future__ import annotations

import asyncpg

# A person's export lists at most this many of each kind of row (history is kept for 400
# days by default; an export larger than this says so with `truncated`).
MAX_ROWS = 100_000


async def leads_by_email(pg: asyncpg.Connection, email: str) -> list[str]:
    """Leads whose `email` trait is this address, compared without regard to case."""
    rows = await pg.fetch(
        "SELECT lead_id FROM leads WHERE lower(traits->>'email') = lower($1) ORDER BY lead_id",
        email,
    )
    return [r["lead_id"] for r in rows]


async def lead_row(pg: asyncpg.Connection, lead_id: str) -> asyncpg.Record | None:
    return await pg.fetchrow(
        "SELECT lead_id, stage, account_id, traits::text AS traits, fit, engagement, "
        "ruleset_version, created_at, updated_at FROM leads WHERE lead_id = $1",
        lead_id,
    )


async def merged_ids(pg: asyncpg.Connection, lead_id: str) -> list[asyncpg.Record]:
    """The ids merged into this lead (anonymous ids, earlier user ids), oldest first."""
    return await pg.fetch(
        "SELECT alias_id, linked_at FROM identity_links WHERE lead_id = $1 "
        "ORDER BY linked_at, alias_id",
        lead_id,
    )


async def events(pg: asyncpg.Connection, lead_id: str) -> list[asyncpg.Record]:
    """Every scored event held, as stored (the event's document and its hits), oldest first."""
    return await pg.fetch(
        "SELECT message_id, type, occurred_at, event::text AS event, hits::text AS hits, "
        "points, ruleset_version FROM lead_events WHERE lead_id = $1 ORDER BY id LIMIT $2",
        lead_id,
        MAX_ROWS,
    )


async def handoffs(pg: asyncpg.Connection, lead_id: str) -> list[asyncpg.Record]:
    return await pg.fetch(
        "SELECT transition_id, stage, owner, entered_at, respond_by, status, answered_at, "
        "feedback_id, breached_at FROM handoffs WHERE lead_id = $1 "
        "ORDER BY entered_at, transition_id LIMIT $2",
        lead_id,
        MAX_ROWS,
    )


async def feedback(pg: asyncpg.Connection, lead_id: str) -> list[asyncpg.Record]:
    return await pg.fetch(
        "SELECT feedback_id, outcome, reason, given_by, at, result, transition_id "
        "FROM feedback WHERE lead_id = $1 ORDER BY at, feedback_id LIMIT $2",
        lead_id,
        MAX_ROWS,
    )
