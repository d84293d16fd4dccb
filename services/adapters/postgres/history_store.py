"""Scored events: one history row per event (which also holds its dedup key: looked up by
`leadscore_open_batch`, migration 0020), read back for explanations and replays.

Every function here runs inside the caller's transaction and never commits: a batch's state
changes, dedup keys, outbox rows and partition offsets commit together or not at all.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

import asyncpg
import orjson

from scoring_service.effects import Hit
from scoring_service.intake import Event, event_doc, event_from_doc
from scoring_service.pipeline import ScoredEvent, Workspace
from services.adapters.postgres.lead_store import _ts
from stage_router.records import (
    TransitionDoc,
)

HISTORY_COLUMNS = (
    "lead_id",
    "message_id",
    "type",
    "occurred_at",
    "event",
    "hits",
    "points",
    "ruleset_version",
    "held",
    "raw_id",
    "challenger_hits",
)


async def save_history(
    pg: asyncpg.Connection,
    ruleset_version: int,
    scored: Sequence[ScoredEvent],
    ws: Workspace,
    challenger_hits: Sequence[Sequence[Hit]] | None = None,
) -> None:
    """Keep every scored event with its rule hits: the lead's history, replayed by
    simulations, impact reports and re-scoring. Merged leads' history moves with them."""
    if ws.merged_leads:
        merged = [m for m in ws.new_links if m in ws.merged_leads]
        await pg.execute(
            # The ANY() gives the planner the index on lead_id (a join on unnest alone is
            # planned as a scan of the whole history).
            "UPDATE lead_events e SET lead_id = m.target "
            "FROM unnest($1::text[], $2::text[]) AS m(source, target) "
            "WHERE e.lead_id = m.source AND e.lead_id = ANY($1::text[])",
            merged,
            [ws.canonical(m) for m in merged],
        )
    if not scored:
        return
    challenger = (
        [_hits_json(h) for h in challenger_hits]
        if challenger_hits is not None
        else [None] * len(scored)
    )
    # Binary COPY, in the batch's order (the ids keep a lead's history in event order):
    # cheaper per row than one INSERT of text arrays that PostgreSQL unnests and casts.
    await pg.copy_records_to_table(
        "lead_events",
        columns=HISTORY_COLUMNS,
        records=[
            (
                # The lead each event counts for once the batch is done: an anonymous lead
                # merged later in the same batch hands its events on like its older ones.
                ws.canonical(s.lead_id),
                s.event.message_id,
                s.event.type,
                _ts(s.event.ts),
                orjson.dumps(event_doc(s.event)).decode(),
                _hits_json(s.effects.hits),
                sum(h.points for h in s.effects.hits),
                ruleset_version,
                s.held,
                # The dedup key (with message_id): this row is what marks the event as seen.
                s.event.raw_id,
                # What a challenger's rules hit on the same event (the outcome report's rules).
                hits,
            )
            for s, hits in zip(scored, challenger, strict=True)
        ],
    )


async def load_history(
    pg: Any, lead_ids: list[str], since: Any = None
) -> dict[str, list[tuple[int, Event]]]:
    """Each lead's stored events, oldest first, with their `lead_events` row ids."""
    rows = await pg.fetch(
        "SELECT id, lead_id, event::text AS event FROM lead_events "
        "WHERE lead_id = ANY($1::text[]) AND ($2::timestamptz IS NULL OR occurred_at >= $2) "
        "ORDER BY lead_id, id",
        lead_ids,
        since,
    )
    history: dict[str, list[tuple[int, Event]]] = {}
    for row in rows:
        history.setdefault(row["lead_id"], []).append(
            (row["id"], event_from_doc(orjson.loads(row["event"]), row["lead_id"]))
        )
    return history


async def supersede_history(pg: asyncpg.Connection, transitions: Sequence[TransitionDoc]) -> None:
    """A recycled lead's engagement starts again from zero: the points of the events it
    has so far no longer count, and its history says so. (Recycling comes from feedback,
    deadlines and admins, never from scoring events, so no event of this transaction is
    among them.)"""
    recycled = sorted({t["lead_id"] for t in transitions if t["to_stage"] == "recycled"})
    if recycled:
        await pg.execute(
            "UPDATE lead_events SET superseded = true "
            "WHERE lead_id = ANY($1::text[]) AND NOT superseded",
            recycled,
        )


async def save_challenger_hits(
    pg: asyncpg.Connection, rows: Sequence[tuple[int, Sequence[Hit]]]
) -> None:
    """A challenger's hits on stored events it replayed (by `lead_events.id`)."""
    if rows:
        await pg.execute(
            "UPDATE lead_events e SET challenger_hits = u.h::json "
            "FROM unnest($1::bigint[], $2::text[]) AS u(i, h) WHERE e.id = u.i",
            [row_id for row_id, _ in rows],
            [_hits_json(hits) for _, hits in rows],
        )


async def rewrite_history_hits(
    pg: asyncpg.Connection, ruleset_version: int, rows: Sequence[tuple[int, list[Hit]]]
) -> None:
    """Re-scoring replays a lead's whole history under another rule set: each stored event
    gets the hits it has now (by `lead_events.id`), so the history explains the new score."""
    if not rows:
        return
    await pg.execute(
        "UPDATE lead_events e SET hits = u.h::json, points = u.p, ruleset_version = $4, "
        "superseded = false "
        "FROM unnest($1::bigint[], $2::text[], $3::float8[]) AS u(i, h, p) WHERE e.id = u.i",
        [row_id for row_id, _ in rows],
        [_hits_json(hits) for _, hits in rows],
        [sum(h.points for h in hits) for _, hits in rows],
        ruleset_version,
    )


def _hits_json(hits: Sequence[Hit]) -> str:
    return orjson.dumps([[h.rule_id, h.points, h.counted] for h in hits]).decode()


async def days_ago(pg: asyncpg.Connection, days: float) -> datetime:
    """The database's now, less `days` (the window a replay reads)."""
    moment: datetime = await pg.fetchval("SELECT now() - make_interval(secs => $1)", days * 86400)
    return moment


async def count_leads_with_history(pg: asyncpg.Connection, since: datetime) -> int:
    return int(
        await pg.fetchval(
            "SELECT count(DISTINCT lead_id) FROM lead_events WHERE occurred_at >= $1", since
        )
    )


async def leads_with_history_after(
    pg: asyncpg.Connection, since: datetime, after: str, limit: int
) -> list[str]:
    """The next `limit` leads after `after` (in id order) with events since `since`."""
    rows = await pg.fetch(
        "SELECT DISTINCT lead_id FROM lead_events WHERE occurred_at >= $1 "
        "AND lead_id > $2 ORDER BY lead_id LIMIT $3",
        since,
        after,
        limit,
    )
    return [r["lead_id"] for r in rows]
