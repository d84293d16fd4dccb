"""Transitions, follow-up deadlines and notification owners, stored with the transaction that
decided them.

Every function here runs inside the caller's transaction and never commits: a batch's state
changes, dedup keys, outbox rows and partition offsets commit together or not at all.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime

import asyncpg
import orjson

from scoring_service.lead_scores import QUEUE_PREFIX
from services.adapters.postgres.lead_store import _ts
from stage_router.records import (
    AccountNotificationDoc,
    AccountTransitionDoc,
    Handoff,
    JourneyMoveDoc,
    NotificationDoc,
    TransitionDoc,
)


async def save_transitions(pg: asyncpg.Connection, transitions: Sequence[TransitionDoc]) -> None:
    if not transitions:
        return
    await pg.execute(
        """
        INSERT INTO transitions (transition_id, lead_id, from_stage, to_stage, reason, rule_id,
                                 ruleset_version, caused_by, score_total, occurred_at, emitted_at,
                                 record)
        SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[],
                             $6::text[], $7::int[], $8::text[], $9::float8[],
                             $10::timestamptz[], $11::timestamptz[], $12::jsonb[])
        ON CONFLICT DO NOTHING
        """,
        [t["transition_id"] for t in transitions],
        [t["lead_id"] for t in transitions],
        [t["from_stage"] for t in transitions],
        [t["to_stage"] for t in transitions],
        [t["reason"] for t in transitions],
        [t["rule_id"] for t in transitions],
        [t["ruleset_version"] for t in transitions],
        [t["caused_by"] for t in transitions],
        [t["score"]["total"] for t in transitions],
        [datetime.fromisoformat(t["occurred_at"]) for t in transitions],
        [datetime.fromisoformat(t["emitted_at"]) for t in transitions],
        [orjson.dumps(t).decode() for t in transitions],
    )


async def assign_owners(
    pg: asyncpg.Connection,
    notifications: Sequence[NotificationDoc | AccountNotificationDoc],
    queues: Mapping[str, Sequence[str]],
) -> None:
    """Name each notification's owner: the next owner of its queue, in turn.

    One shared counter per queue, advanced in the batch's transaction, makes the rotation
    fair across instances: whoever commits takes the next places in the line.
    """
    waiting: dict[str, list[NotificationDoc | AccountNotificationDoc]] = {}
    for note in notifications:
        owner = note["owner"]
        if owner.startswith(QUEUE_PREFIX) and queues.get(owner[len(QUEUE_PREFIX) :]):
            waiting.setdefault(owner[len(QUEUE_PREFIX) :], []).append(note)
    if not waiting:
        return
    names = sorted(waiting)  # one lock order for every instance
    rows = await pg.fetch(
        "INSERT INTO routing_cursors AS c (queue, position) "
        "SELECT * FROM unnest($1::text[], $2::bigint[]) "
        "ON CONFLICT (queue) DO UPDATE SET position = c.position + EXCLUDED.position "
        "RETURNING queue, position",
        names,
        [len(waiting[n]) for n in names],
    )
    for row in rows:
        owners = queues[row["queue"]]
        notes = waiting[row["queue"]]
        start = row["position"] - len(notes)
        for offset, note in enumerate(notes):
            note["owner"] = owners[(start + offset) % len(owners)]


async def save_handoffs(
    pg: asyncpg.Connection, handoffs: Sequence[Handoff], owners: Mapping[str, str]
) -> None:
    """Open a follow-up deadline for each handoff; a lead's earlier open ones are superseded
    (it moved on), and so are all but its last one in this batch."""
    if not handoffs:
        return
    last = {h.lead_id: h.transition_id for h in handoffs}
    await pg.execute(
        "UPDATE handoffs SET status = 'superseded' WHERE status = 'open' "
        "AND lead_id = ANY($1::text[])",
        list(last),
    )
    await pg.execute(
        "INSERT INTO handoffs (transition_id, lead_id, stage, owner, entered_at, respond_by, "
        "status) SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], "
        "$5::timestamptz[], $6::timestamptz[], $7::text[]) ON CONFLICT DO NOTHING",
        [h.transition_id for h in handoffs],
        [h.lead_id for h in handoffs],
        [h.stage for h in handoffs],
        [owners.get(h.transition_id, QUEUE_PREFIX + h.queue) for h in handoffs],
        [_ts(h.entered_at) for h in handoffs],
        [_ts(h.respond_by) for h in handoffs],
        ["open" if last[h.lead_id] == h.transition_id else "superseded" for h in handoffs],
    )


async def answer_handoffs(
    pg: asyncpg.Connection, answered: Sequence[tuple[str, str, float]]
) -> list[asyncpg.Record]:
    """Mark the open (or breached) follow-up deadlines of (lead, feedback id, answered at)
    answered; returns each one's stage, seconds to the answer and whether it was in time."""
    return await pg.fetch(
        # A breached deadline can still be answered (late): it keeps its status.
        "UPDATE handoffs h SET answered_at = to_timestamp(a.at), feedback_id = a.feedback_id, "
        "status = CASE WHEN h.status = 'open' THEN 'answered' ELSE h.status END "
        "FROM unnest($1::text[], $2::text[], $3::float8[]) AS a(lead_id, feedback_id, at) "
        "WHERE h.lead_id = a.lead_id AND h.answered_at IS NULL "
        "AND h.status IN ('open', 'breached') "
        "RETURNING h.stage, extract(epoch FROM h.answered_at - h.entered_at) AS seconds, "
        "h.answered_at <= h.respond_by AS in_time",
        [a[0] for a in answered],
        [a[1] for a in answered],
        [a[2] for a in answered],
    )


async def save_account_transitions(
    pg: asyncpg.Connection, transitions: Sequence[AccountTransitionDoc]
) -> None:
    await pg.execute(
        """
        INSERT INTO account_transitions (transition_id, account_id, seq, from_stage, to_stage,
                                         reason, ruleset_version, score_total, occurred_at,
                                         emitted_at, record)
        SELECT * FROM unnest($1::text[], $2::text[], $3::int[], $4::text[], $5::text[],
                             $6::text[], $7::int[], $8::float8[], $9::timestamptz[],
                             $10::timestamptz[], $11::jsonb[])
        ON CONFLICT DO NOTHING
        """,
        [t["transition_id"] for t in transitions],
        [t["account_id"] for t in transitions],
        [int(t["transition_id"].rsplit(":", 1)[1]) for t in transitions],
        [t["from_stage"] for t in transitions],
        [t["to_stage"] for t in transitions],
        [t["reason"] for t in transitions],
        [t["ruleset_version"] for t in transitions],
        [t["score"]["total"] for t in transitions],
        [datetime.fromisoformat(t["occurred_at"]) for t in transitions],
        [datetime.fromisoformat(t["emitted_at"]) for t in transitions],
        [orjson.dumps(t).decode() for t in transitions],
    )


async def account_transition_caused_by(
    pg: asyncpg.Connection, account_id: str, caused_by: str
) -> AccountTransitionDoc | None:
    """The account's transition an earlier feedback with this id made, if any."""
    text = await pg.fetchval(
        "SELECT record::text FROM account_transitions WHERE account_id = $1 "
        "AND record->>'caused_by' = $2",
        account_id,
        caused_by,
    )
    return orjson.loads(text) if text is not None else None


async def stored_feedback(
    pg: asyncpg.Connection, feedback_ids: Sequence[str]
) -> dict[str, asyncpg.Record]:
    """Feedback already applied (or refused) under these ids: a repeat is answered as before."""
    return {
        r["feedback_id"]: r
        for r in await pg.fetch(
            "SELECT feedback_id, lead_id, outcome, result, detail, transition_id FROM feedback "
            "WHERE feedback_id = ANY($1::text[])",
            list(feedback_ids),
        )
    }


# A feedback row: id, lead, outcome, reason, by, at, result, detail, transition id.
FeedbackRow = tuple[str, str, str, str | None, str | None, datetime, str, str | None, str | None]


async def save_feedback(pg: asyncpg.Connection, rows: Sequence[FeedbackRow]) -> None:
    await pg.execute(
        "INSERT INTO feedback (feedback_id, lead_id, outcome, reason, given_by, at, result, "
        "detail, transition_id) SELECT * FROM unnest($1::text[], $2::text[], $3::text[], "
        "$4::text[], $5::text[], $6::timestamptz[], $7::text[], $8::text[], $9::text[])",
        *([row[n] for row in rows] for n in range(9)),
    )


async def save_journey_moves(pg: asyncpg.Connection, moves: Sequence[JourneyMoveDoc]) -> None:
    """Each move once: a replayed event numbers its moves as the first run did."""
    if not moves:
        return
    await pg.execute(
        """
        INSERT INTO journey_moves (subject, subject_id, seq, from_phase, to_phase, reason,
                                   rule_id, caused_by, content, channel, seen, occurred_at,
                                   ruleset_version)
        SELECT s, i, q, f, t, r, ru, c, co, ch,
               se::jsonb, o, v
        FROM unnest($1::text[], $2::text[], $3::int[], $4::text[], $5::text[], $6::text[],
                    $7::text[], $8::text[], $9::text[], $10::text[], $11::text[],
                    $12::timestamptz[], $13::int[])
             AS u(s, i, q, f, t, r, ru, c, co, ch, se, o, v)
        ON CONFLICT DO NOTHING
        """,
        [m["subject"] for m in moves],
        [m["subject_id"] for m in moves],
        [m["seq"] for m in moves],
        [m["from_phase"] for m in moves],
        [m["to_phase"] for m in moves],
        [m["reason"] for m in moves],
        [m["rule_id"] for m in moves],
        [m["caused_by"] for m in moves],
        [m["content"] for m in moves],
        [m["channel"] for m in moves],
        [orjson.dumps(m["seen"]).decode() for m in moves],
        [_ts(m["occurred_at"]) for m in moves],
        [m["ruleset_version"] for m in moves],
    )


async def leads_with_due_handoffs(pg: asyncpg.Connection, now: float, limit: int) -> list[str]:
    """Leads whose open handoff is past its deadline, soonest first. Nothing is locked: the
    deadline watcher locks the leads first, then takes the handoffs still open."""
    rows = await pg.fetch(
        "SELECT lead_id FROM handoffs WHERE status = 'open' AND respond_by <= to_timestamp($1) "
        "ORDER BY respond_by LIMIT $2",
        now,
        limit,
    )
    return [row["lead_id"] for row in rows]


async def breach_due_handoffs(
    pg: asyncpg.Connection, now: float, lead_ids: list[str]
) -> list[asyncpg.Record]:
    """Mark these leads' handoffs still open and past due as breached; returns them."""
    return await pg.fetch(
        "UPDATE handoffs SET status = 'breached', breached_at = to_timestamp($1) "
        "WHERE status = 'open' AND respond_by <= to_timestamp($1) "
        "AND lead_id = ANY($2::text[]) "
        "RETURNING transition_id, lead_id, stage, owner, respond_by",
        now,
        lead_ids,
    )


async def count_open_handoffs(pg: asyncpg.Connection) -> int:
    count: int = await pg.fetchval("SELECT count(*) FROM handoffs WHERE status = 'open'")
    return count
