"""Loading and saving a batch's working set in PostgreSQL: one round trip per table.

Every function here runs inside the caller's transaction and never commits: the batch's
state changes, dedup keys, outbox rows and partition offsets commit together or not at all.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import asyncpg
import orjson

from scoring_service.engine import QUEUE_PREFIX, Effects, Hit
from scoring_service.intake import Event, event_doc, event_from_doc
from scoring_service.pipeline import MAX_LINK_HOPS, ScoredEvent, Workspace
from scoring_service.state import Account, LeadState
from stage_router.records import (
    AccountNotificationDoc,
    AccountTransitionDoc,
    Handoff,
    NotificationDoc,
    TransitionDoc,
)


@dataclass(frozen=True, slots=True)
class OutboxRow:
    """A record waiting in the outbox for the relay to publish."""

    topic: str
    key: bytes | None
    value: bytes
    record_id: str | None
    headers: list[tuple[str, str]] | None = None


def _ts(value: float | None) -> datetime | None:
    return datetime.fromtimestamp(value, UTC) if value is not None else None


def _epoch(value: datetime | None) -> float | None:
    return value.timestamp() if value is not None else None


class LogReplaced(Exception):
    """The batch was read from another log than the stored offsets were (the topic's id
    changed: the broker lost its log, or the topic was created again)."""

    def __init__(self, topic: str, log_id: uuid.UUID) -> None:
        super().__init__(f"{topic} is a new log now (topic id {log_id})")
        self.topic = topic
        self.log_id = log_id


async def lock_offsets(
    pg: asyncpg.Connection,
    topic: str,
    partitions: Sequence[int],
    log_id: uuid.UUID | None = None,
) -> dict[int, int]:
    """Lock this topic's partition offset rows and return each partition's next offset.

    The row lock serialises two consumers that both believe they own a partition (during a
    rebalance); the stored offset tells the later one which records are already done. With
    `log_id` (the topic id the batch was read under), raises LogReplaced when a row belongs
    to another log.
    """
    await pg.execute(
        "INSERT INTO consumer_offsets (topic, partition, next_offset) "
        "SELECT $1, p, 0 FROM unnest($2::int[]) AS p ON CONFLICT DO NOTHING",
        topic,
        list(partitions),
    )
    rows = await pg.fetch(
        "SELECT partition, next_offset, topic_id FROM consumer_offsets "
        "WHERE topic = $1 AND partition = ANY($2::int[]) ORDER BY partition FOR UPDATE",
        topic,
        list(partitions),
    )
    if log_id is not None and any(r["topic_id"] not in (None, log_id) for r in rows):
        raise LogReplaced(topic, log_id)
    return {r["partition"]: r["next_offset"] for r in rows}


async def start_new_log(pg: asyncpg.Connection, topic: str, log_id: uuid.UUID | None) -> list[int]:
    """Every stored offset of `topic` back to 0 for a new log (`log_id`, where known); the
    partitions reset. Rows already on that log stay: another instance got there first."""
    rows = await pg.fetch(
        "UPDATE consumer_offsets SET next_offset = 0, last_crc = NULL, topic_id = $2, "
        "updated_at = now() "
        "WHERE topic = $1 AND ($2::uuid IS NULL OR topic_id IS DISTINCT FROM $2) "
        "RETURNING partition",
        topic,
        log_id,
    )
    return sorted(r["partition"] for r in rows)


async def publish_outbox_again(pg: asyncpg.Connection) -> int:
    """Queue every retained outbox record to be published again (the output topics were lost
    with the broker's log); returns how many."""
    status = await pg.execute("UPDATE outbox SET sent_at = NULL WHERE sent_at IS NOT NULL")
    return int(status.split()[-1])


async def stored_log_ids(pg: asyncpg.Connection, topic: str) -> set[uuid.UUID]:
    rows = await pg.fetch(
        "SELECT DISTINCT topic_id FROM consumer_offsets WHERE topic = $1 AND topic_id IS NOT NULL",
        topic,
    )
    return {r["topic_id"] for r in rows}


async def save_offsets(
    pg: asyncpg.Connection,
    topic: str,
    next_offsets: dict[int, int],
    fingerprints: dict[int, int | None] | None = None,
    log_id: uuid.UUID | None = None,
) -> None:
    """Store where each partition's work ends, the id of the log it was read from, and a
    fingerprint (CRC-32 of the value) of the last record scored there: by either a broker
    that lost its log is recognised (the fingerprint where the broker gives no ids)."""
    fingerprints = fingerprints or {}
    await pg.execute(
        "UPDATE consumer_offsets o SET next_offset = v.next_offset, last_crc = v.crc, "
        "topic_id = COALESCE($5, o.topic_id), updated_at = now() "
        "FROM unnest($2::int[], $3::bigint[], $4::bigint[]) AS v(partition, next_offset, crc) "
        "WHERE o.topic = $1 AND o.partition = v.partition",
        topic,
        list(next_offsets),
        list(next_offsets.values()),
        [fingerprints.get(p) for p in next_offsets],
        log_id,
    )


async def stored_offsets(pg: asyncpg.Connection, topic: str) -> dict[int, int]:
    rows = await pg.fetch(
        "SELECT partition, next_offset FROM consumer_offsets WHERE topic = $1", topic
    )
    return {r["partition"]: r["next_offset"] for r in rows}


async def stored_fingerprints(pg: asyncpg.Connection, topic: str) -> dict[int, tuple[int, int]]:
    """Partition -> (next offset, CRC-32 of the record before it), where both are known."""
    rows = await pg.fetch(
        "SELECT partition, next_offset, last_crc FROM consumer_offsets "
        "WHERE topic = $1 AND last_crc IS NOT NULL AND next_offset > 0",
        topic,
    )
    return {r["partition"]: (r["next_offset"], r["last_crc"]) for r in rows}


async def unseen(pg: asyncpg.Connection, keys: Sequence[tuple[str, str]]) -> set[tuple[str, str]]:
    """The (raw lead id, messageId) pairs not scored before. The key of an event scored is
    stored in its history row (`save_history`, same transaction; a unique index); keys from
    before that are in `processed_events`."""
    if not keys:
        return set()
    rows = await pg.fetch(
        "SELECT k.r, k.m FROM unnest($1::text[], $2::text[]) AS k(r, m) "
        "WHERE EXISTS (SELECT 1 FROM lead_events e WHERE e.raw_id = k.r AND e.message_id = k.m) "
        "OR EXISTS (SELECT 1 FROM processed_events p WHERE p.raw_id = k.r AND p.message_id = k.m)",
        [k[0] for k in keys],
        [k[1] for k in keys],
    )
    return set(keys) - {(r["r"], r["m"]) for r in rows}


async def lock_keys(pg: asyncpg.Connection, keys: Iterable[str]) -> None:
    """Take transaction-scoped advisory locks on leads and accounts, in sorted order,
    waiting for each (step 3 of the lock order in services/lead_transaction.py).

    Events for one lead may arrive on several partitions (anonymous and identified keys
    differ), so two consumers can touch one lead; the locks make them take turns, including
    for leads that do not exist yet. Sorted order keeps two transactions from deadlocking.
    """
    ordered = sorted(set(keys))
    if ordered:
        await pg.execute(
            "SELECT pg_advisory_xact_lock(hashtextextended(k, 7)) "
            "FROM unnest($1::text[]) WITH ORDINALITY AS t(k, n) ORDER BY n",
            ordered,
        )


async def try_lock_keys(pg: asyncpg.Connection, keys: Iterable[str]) -> bool:
    """Take the advisory locks without waiting; False when another transaction holds one.

    For locks found to be needed after step 3 (a link written meanwhile): waiting for them
    out of order could deadlock, so the caller retries the whole transaction instead.
    """
    ordered = sorted(set(keys))
    if not ordered:
        return True
    got = await pg.fetchval(
        "SELECT bool_and(pg_try_advisory_xact_lock(hashtextextended(k, 7))) "
        "FROM unnest($1::text[]) WITH ORDINALITY AS t(k, n)",
        ordered,
    )
    return bool(got)


async def load_links(pg: asyncpg.Connection, ids: Sequence[str]) -> dict[str, str]:
    rows = await pg.fetch(
        f"""
        WITH RECURSIVE chain(alias_id, lead_id, depth) AS (
            SELECT alias_id, lead_id, 1 FROM identity_links WHERE alias_id = ANY($1::text[])
            UNION ALL
            SELECT l.alias_id, l.lead_id, c.depth + 1
            FROM identity_links l JOIN chain c ON l.alias_id = c.lead_id
            WHERE c.depth < {MAX_LINK_HOPS}
        )
        SELECT DISTINCT alias_id, lead_id FROM chain
        """,
        list(ids),
    )
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


async def save_workspace(pg: asyncpg.Connection, ws: Workspace) -> None:
    """Write back what a batch changed: leads, merged-away leads, links, accounts."""
    await save_leads(pg, [ws.leads[i] for i in sorted(ws.changed_leads) if i in ws.leads])
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


async def save_leads(
    pg: asyncpg.Connection, leads: Sequence[LeadState], *, table: str = "leads"
) -> None:
    if not leads:
        return
    await pg.execute(
        f"""
        INSERT INTO {table} (lead_id, stage, stage_entered_at, account_id, traits, fit,
                           engagement, as_of, seq, ruleset_version, scoring)
        SELECT l, s, se, a, t::jsonb, f, e, ao, q, v, sc::json
        FROM unnest($1::text[], $2::text[], $3::timestamptz[], $4::text[], $5::text[],
                    $6::float8[], $7::float8[], $8::timestamptz[], $9::int[], $10::int[],
                    $11::text[]) AS u(l, s, se, a, t, f, e, ao, q, v, sc)
        ON CONFLICT (lead_id) DO UPDATE SET
            stage = EXCLUDED.stage, stage_entered_at = EXCLUDED.stage_entered_at,
            account_id = EXCLUDED.account_id, traits = EXCLUDED.traits,
            fit = EXCLUDED.fit, engagement = EXCLUDED.engagement, as_of = EXCLUDED.as_of,
            seq = EXCLUDED.seq, ruleset_version = EXCLUDED.ruleset_version,
            scoring = EXCLUDED.scoring, updated_at = now()
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
    )


async def save_accounts(
    pg: asyncpg.Connection, accounts: Sequence[Account], *, table: str = "accounts"
) -> None:
    await pg.execute(
        f"""
        INSERT INTO {table} (account_id, traits, version, stage, stage_entered_at, seq, as_of,
                              fit, engagement, coverage, score, roles_covered, member_count,
                              ruleset_version, scoring)
        SELECT a, t::jsonb, v, st, se, q, ao, f, e, c, f + e + c,
               coalesce(string_to_array(nullif(rc, ''), ','), '{{}}'), mc, rv, sc::jsonb
        FROM unnest($1::text[], $2::text[], $3::int[], $4::text[], $5::timestamptz[],
                    $6::int[], $7::timestamptz[], $8::float8[], $9::float8[], $10::float8[],
                    $11::text[], $12::int[], $13::int[], $14::text[])
             AS u(a, t, v, st, se, q, ao, f, e, c, rc, mc, rv, sc)
        ON CONFLICT (account_id) DO UPDATE SET
            traits = EXCLUDED.traits, version = EXCLUDED.version, stage = EXCLUDED.stage,
            stage_entered_at = EXCLUDED.stage_entered_at, seq = EXCLUDED.seq,
            as_of = EXCLUDED.as_of, fit = EXCLUDED.fit, engagement = EXCLUDED.engagement,
            coverage = EXCLUDED.coverage, score = EXCLUDED.score,
            roles_covered = EXCLUDED.roles_covered, member_count = EXCLUDED.member_count,
            ruleset_version = EXCLUDED.ruleset_version, scoring = EXCLUDED.scoring,
            updated_at = now()
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
    await pg.execute(
        """
        INSERT INTO lead_events (lead_id, message_id, type, occurred_at, event, hits, points,
                                 ruleset_version, held, raw_id, challenger_hits)
        SELECT l, m, t, o, e::jsonb, h::json, p, $8, hd, r, ch::json
        FROM unnest($1::text[], $2::text[], $3::text[], $4::timestamptz[], $5::text[],
                    $6::text[], $7::float8[], $9::text[], $10::text[], $11::text[])
             WITH ORDINALITY AS u(l, m, t, o, e, h, p, hd, r, ch, n)
        ORDER BY n
        """,
        # The lead each event counts for once the batch is done: an anonymous lead merged
        # later in the same batch hands its events on like its older ones.
        [ws.canonical(s.lead_id) for s in scored],
        [s.event.message_id for s in scored],
        [s.event.type for s in scored],
        [_ts(s.event.ts) for s in scored],
        [orjson.dumps(event_doc(s.event)).decode() for s in scored],
        [_hits_json(s.effects.hits) for s in scored],
        [sum(h.points for h in s.effects.hits) for s in scored],
        ruleset_version,
        [s.held for s in scored],
        # The dedup key (with message_id): this row is what marks the event as seen.
        [s.event.raw_id for s in scored],
        # What a challenger's rules hit on the same event (the outcome report's rule table).
        [_hits_json(h) for h in challenger_hits]
        if challenger_hits is not None
        else [None] * len(scored),
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


async def enqueue(pg: asyncpg.Connection, rows: Sequence[OutboxRow]) -> None:
    """Append records to the outbox, keeping their order (the relay publishes by id)."""
    if not rows:
        return
    await pg.execute(
        # The notification reaches every relay at commit (services/outbox.py: CHANNEL).
        """
        WITH added AS (
            INSERT INTO outbox (topic, key, value, record_id, headers)
            SELECT t, k, v, r, h::jsonb
            FROM unnest($1::text[], $2::bytea[], $3::bytea[], $4::text[], $5::text[])
                 WITH ORDINALITY AS u(t, k, v, r, h, n)
            ORDER BY n
            RETURNING 1
        )
        SELECT pg_notify('leadscore_outbox', '') WHERE EXISTS (SELECT 1 FROM added)
        """,
        [r.topic for r in rows],
        [r.key for r in rows],
        [r.value for r in rows],
        [r.record_id for r in rows],
        [orjson.dumps(r.headers).decode() if r.headers else None for r in rows],
    )


def outbox_rows(
    transitions: Sequence[TransitionDoc],
    notifications: Sequence[NotificationDoc],
    *,
    transitions_topic: str,
    notifications_topic: str,
) -> list[OutboxRow]:
    """Transition and notification records as outbox rows, keyed by lead."""
    rows = [
        OutboxRow(transitions_topic, t["lead_id"].encode(), orjson.dumps(t), t["transition_id"])
        for t in transitions
    ]
    rows.extend(
        OutboxRow(notifications_topic, n["lead_id"].encode(), orjson.dumps(n), n["notification_id"])
        for n in notifications
    )
    return rows


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


async def record_effects(
    pg: asyncpg.Connection,
    effects: Effects,
    *,
    queues: Mapping[str, Sequence[str]],
    transitions_topic: str,
    notifications_topic: str,
    account_transitions_topic: str,
) -> list[OutboxRow]:
    """Keep what scoring decided: owners named, transitions and deadlines stored; returns
    the outbox rows to publish. Runs in the caller's transaction."""
    await assign_owners(pg, [*effects.notifications, *effects.account_notifications], queues)
    owners = {
        n["notification_id"].rsplit(":", 1)[0]: n["owner"]
        for n in effects.notifications
        if n["type"] == "promotion"
    }
    await save_transitions(pg, effects.transitions)
    await supersede_history(pg, effects.transitions)
    await save_handoffs(pg, effects.handoffs, owners)
    rows = outbox_rows(
        effects.transitions,
        effects.notifications,
        transitions_topic=transitions_topic,
        notifications_topic=notifications_topic,
    )
    if effects.account_transitions:
        await save_account_transitions(pg, effects.account_transitions)
        rows.extend(
            account_outbox_rows(
                effects.account_transitions,
                effects.account_notifications,
                transitions_topic=account_transitions_topic,
                notifications_topic=notifications_topic,
            )
        )
    return rows


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


def account_outbox_rows(
    transitions: Sequence[AccountTransitionDoc],
    notifications: Sequence[AccountNotificationDoc],
    *,
    transitions_topic: str,
    notifications_topic: str,
) -> list[OutboxRow]:
    """Account records as outbox rows, keyed by account."""
    rows = [
        OutboxRow(transitions_topic, t["account_id"].encode(), orjson.dumps(t), t["transition_id"])
        for t in transitions
    ]
    rows.extend(
        OutboxRow(
            notifications_topic, n["account_id"].encode(), orjson.dumps(n), n["notification_id"]
        )
        for n in notifications
    )
    return rows
