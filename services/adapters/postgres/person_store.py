"""What the service holds on one person, found by any of their ids or their e-mail address:
the rows a right-of-access export is made of, the erasure of all of them, the requests to
do either, and the suppression list (services/app/people.py, services/pipeline/erasures.py)."""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Sequence
from typing import Any

import asyncpg
import orjson

from services.adapters.postgres import read_store

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


# The rows below are read for the lead and every id merged into it at once: what an
# anonymous visitor did before it was recognised stays under its own id (only its events
# move to the lead), and the person's export must hold it as erasure removes it.


async def handoffs(pg: asyncpg.Connection, lead_ids: Sequence[str]) -> list[asyncpg.Record]:
    return await pg.fetch(
        "SELECT lead_id, transition_id, stage, owner, entered_at, respond_by, status, "
        "answered_at, feedback_id, breached_at FROM handoffs WHERE lead_id = ANY ($1::text[]) "
        "ORDER BY entered_at, transition_id LIMIT $2",
        list(lead_ids),
        MAX_ROWS,
    )


async def feedback(pg: asyncpg.Connection, lead_ids: Sequence[str]) -> list[asyncpg.Record]:
    return await pg.fetch(
        "SELECT lead_id, feedback_id, outcome, reason, given_by, at, result, transition_id "
        "FROM feedback WHERE lead_id = ANY ($1::text[]) ORDER BY at, feedback_id LIMIT $2",
        list(lead_ids),
        MAX_ROWS,
    )


async def transitions(pg: asyncpg.Connection, lead_ids: Sequence[str]) -> list[asyncpg.Record]:
    """The transition records as published, oldest first."""
    return await pg.fetch(
        "SELECT lead_id, record::text AS record FROM transitions "
        "WHERE lead_id = ANY ($1::text[]) ORDER BY occurred_at, transition_id LIMIT $2",
        list(lead_ids),
        MAX_ROWS,
    )


async def journey_moves(pg: asyncpg.Connection, lead_ids: Sequence[str]) -> list[dict[str, Any]]:
    """The buyer-journey moves, oldest first."""
    rows = await pg.fetch(
        f"SELECT {read_store.JOURNEY_COLUMNS} FROM journey_moves "
        "WHERE subject = 'lead' AND subject_id = ANY ($1::text[]) ORDER BY seq LIMIT $2",
        list(lead_ids),
        MAX_ROWS,
    )
    return [{**dict(r), "seen": orjson.loads(r["seen"])} for r in rows]


# -- requests ----------------------------------------------------------------------------

REQUEST_COLUMNS = (
    "id, kind, status, found_by, suppress, requested_by, requested_at, finished_at, leads, "
    "removed::text AS removed, failure"
)


async def add_request(
    pg: asyncpg.Connection,
    *,
    request_id: uuid.UUID,
    kind: str,
    found_by: str,
    requested_by: str,
    identifier: str | None = None,
    suppress: bool = False,
    done: bool = False,
    leads: int | None = None,
) -> None:
    """A request as received (`identifier` kept until it is carried out), or done at once."""
    await pg.execute(
        "INSERT INTO person_requests (id, kind, status, found_by, identifier, suppress, "
        "requested_by, finished_at, leads) "
        "VALUES ($1, $2, $3, $4, $5, $6, $7, CASE WHEN $8 THEN now() END, $9)",
        request_id,
        kind,
        "done" if done else "received",
        found_by,
        None if done else identifier,
        suppress,
        requested_by,
        done,
        leads,
    )


async def queue_idle(pg: asyncpg.Connection, *, idle_since: float, limit: int) -> int:
    """Queue the erasure of leads whose latest event is older than `idle_since` (epoch
    seconds), not suppressed, unless one is queued already; returns how many."""
    return _count(
        await pg.execute(
            """
            INSERT INTO person_requests (id, kind, status, found_by, identifier, suppress,
                                         requested_by)
            SELECT gen_random_uuid(), 'erase', 'received', 'lead_id', l.lead_id, false,
                   'retention'
            FROM leads l
            WHERE coalesce(l.as_of, l.updated_at) < to_timestamp($1)
              AND NOT EXISTS (SELECT 1 FROM person_requests r
                              WHERE r.status = 'received' AND r.identifier = l.lead_id)
            LIMIT $2
            """,
            idle_since,
            limit,
        )
    )


async def take_waiting(pg: asyncpg.Connection) -> asyncpg.Record | None:
    """The oldest erasure not yet carried out, locked (other instances skip it); None when
    there is none."""
    return await pg.fetchrow(
        "SELECT id, found_by, identifier, suppress, requested_by FROM person_requests "
        "WHERE status = 'received' ORDER BY requested_at, id LIMIT 1 FOR UPDATE SKIP LOCKED"
    )


async def finish_request(
    pg: asyncpg.Connection,
    request_id: uuid.UUID,
    *,
    leads: int,
    removed: dict[str, int] | None,
    failure: str | None = None,
) -> None:
    """Done (or failed, with the reason): the identifier is let go either way."""
    await pg.execute(
        "UPDATE person_requests SET status = $2, identifier = NULL, finished_at = now(), "
        "leads = $3, removed = $4::jsonb, failure = $5 WHERE id = $1",
        request_id,
        "failed" if failure else "done",
        leads,
        orjson.dumps(removed).decode() if removed is not None else None,
        failure,
    )


async def request(pg: asyncpg.Connection, request_id: uuid.UUID) -> asyncpg.Record | None:
    return await pg.fetchrow(
        f"SELECT {REQUEST_COLUMNS} FROM person_requests WHERE id = $1", request_id
    )


async def requests(
    pg: asyncpg.Connection, *, limit: int, status: str | None = None
) -> list[asyncpg.Record]:
    """The newest requests first."""
    return await pg.fetch(
        f"SELECT {REQUEST_COLUMNS} FROM person_requests "
        "WHERE $2::text IS NULL OR status = $2 ORDER BY requested_at DESC, id LIMIT $1",
        limit,
        status,
    )


async def waiting_count(pg: asyncpg.Connection) -> int:
    return int(await pg.fetchval("SELECT count(*) FROM person_requests WHERE status = 'received'"))


# -- suppression -------------------------------------------------------------------------


async def suppress(pg: asyncpg.Connection, keys: Iterable[bytes], request_id: uuid.UUID) -> None:
    await pg.execute(
        "INSERT INTO suppressed_keys (key, request_id) SELECT k, $2 FROM unnest($1::bytea[]) k "
        "ON CONFLICT (key) DO NOTHING",
        list(keys),
        request_id,
    )


async def suppressed_by(pg: asyncpg.Connection, key: bytes) -> uuid.UUID | None:
    """The request that put this key on the list, if it is there."""
    found = await pg.fetchval("SELECT request_id FROM suppressed_keys WHERE key = $1", key)
    return found if isinstance(found, uuid.UUID) else None


async def unsuppress(pg: asyncpg.Connection, key: bytes) -> int:
    """Take off the list every key of the requests that listed this one (a person's ids and
    address go together); returns how many keys left it."""
    return _count(
        await pg.execute(
            "DELETE FROM suppressed_keys WHERE request_id IN "
            "(SELECT request_id FROM suppressed_keys WHERE key = $1)",
            key,
        )
    )


# -- erasure -----------------------------------------------------------------------------


async def merged_into(pg: asyncpg.Connection, lead_ids: Sequence[str]) -> list[str]:
    """The ids merged into these leads (anonymous ids, earlier user ids)."""
    rows = await pg.fetch(
        "SELECT alias_id FROM identity_links WHERE lead_id = ANY ($1::text[]) ORDER BY alias_id",
        list(lead_ids),
    )
    return [r["alias_id"] for r in rows]


def _count(status: str) -> int:
    """The row count of a command's status line (`DELETE 3`, `UPDATE 1`)."""
    return int(status.rsplit(" ", 1)[-1])


# What an erasure deletes (or scrubs) in each table, one data-modifying statement each; they
# run together as one statement (services/adapters/postgres/person_store.erase_rows), so an
# erasure is one round trip however many tables there are. Parameters: $1 the person's
# leads now, $2 every id they were known by (a lead merged into another kept its own id on
# what it wrote before), $3 those ids as bytes (outbox keys), $4 their leads' accounts.
# Rows in the history's monthly partitions go through the partitioned table.
ERASE: dict[str, str] = {
    "leads": "DELETE FROM leads WHERE lead_id = ANY ($1::text[])",
    "identity_links": (
        "DELETE FROM identity_links WHERE alias_id = ANY ($2::text[]) OR lead_id = ANY ($2::text[])"
    ),
    "lead_events": "DELETE FROM lead_events WHERE lead_id = ANY ($2::text[])",
    "processed_events": "DELETE FROM processed_events WHERE raw_id = ANY ($2::text[])",
    "transitions": "DELETE FROM transitions WHERE lead_id = ANY ($2::text[])",
    "handoffs": "DELETE FROM handoffs WHERE lead_id = ANY ($2::text[])",
    "feedback": "DELETE FROM feedback WHERE lead_id = ANY ($2::text[])",
    "journey_moves": (
        "DELETE FROM journey_moves WHERE subject = 'lead' AND subject_id = ANY ($2::text[])"
    ),
    "outbox": "DELETE FROM outbox WHERE key = ANY ($3::bytea[])",
    "webhook_deliveries": "DELETE FROM webhook_deliveries WHERE subject = ANY ($2::text[])",
    "crm_writes": "DELETE FROM crm_writes WHERE subject = ANY ($2::text[])",
    "challenger_leads": "DELETE FROM challenger_leads WHERE lead_id = ANY ($2::text[])",
    "challenger_transitions": "DELETE FROM challenger_transitions WHERE lead_id = ANY ($2::text[])",
    # Admins' adjustments and stage moves of the lead, with the reasons they typed.
    "audit_log": "DELETE FROM audit_log WHERE target = ANY ($2::text[]) AND action LIKE 'lead.%'",
    # The account's history keeps each transition's top members: the lead's share stays
    # (the sums still add up), its id goes.
    "account_transitions": """
        UPDATE account_transitions t SET record = jsonb_set(t.record, '{top_members}', (
            SELECT coalesce(jsonb_agg(CASE WHEN m->>'lead_id' = ANY ($1::text[])
                                           THEN m || '{"lead_id": "(erased)"}' ELSE m END
                                      ORDER BY n), '[]')
            FROM jsonb_array_elements(t.record->'top_members') WITH ORDINALITY AS x(m, n)))
        WHERE t.account_id = ANY ($4::text[])
          AND EXISTS (SELECT 1 FROM jsonb_array_elements(t.record->'top_members') m
                      WHERE m->>'lead_id' = ANY ($1::text[]))""",
    # The challenger's copy of the account: its members' entries for the lead.
    "challenger_accounts": """
        UPDATE challenger_accounts c SET scoring = c.scoring || jsonb_strip_nulls(
            jsonb_build_object(
                'members', (c.scoring->'members') - $1::text[],
                'members_by', (c.scoring->'members_by') - $1::text[],
                'member_phases', (c.scoring->'member_phases') - $1::text[]))
        WHERE c.account_id = ANY ($4::text[]) AND c.scoring->'members' ?| $1::text[]""",
}
ERASE_ALL = (
    "WITH "
    + ",\n".join(f"gone_{table} AS ({dml} RETURNING 1)" for table, dml in ERASE.items())
    + "\nSELECT "
    + ", ".join(f"(SELECT count(*) FROM gone_{table}) AS {table}" for table in ERASE)
)


# An account's records name their top members (`"lead_id":"<id>"` in the compact JSON the
# service writes): in the outbox (kept a while after publishing) and in webhook deliveries
# the lead's id is replaced, the rest of the record stays. `$1` is the JSON of one lead id's
# field, `$2` the accounts' ids (as outbox keys: bytes).
SCRUB: dict[str, str] = {
    "outbox": """
        UPDATE outbox SET value = convert_to(
            replace(convert_from(value, 'UTF8'), $1, '"lead_id":"(erased)"'), 'UTF8')
        WHERE key = ANY ($2::bytea[]) AND position(convert_to($1, 'UTF8') IN value) > 0
    """,
    "webhook_deliveries": """
        UPDATE webhook_deliveries SET payload = convert_to(
            replace(convert_from(payload, 'UTF8'), $1, '"lead_id":"(erased)"'), 'UTF8')
        WHERE subject = ANY ($2::text[]) AND position(convert_to($1, 'UTF8') IN payload) > 0
    """,
}


async def erase_rows(
    pg: asyncpg.Connection,
    *,
    lead_ids: Sequence[str],
    ids: Sequence[str],
    account_ids: Sequence[str],
) -> dict[str, int]:
    """Delete every row of these leads, in the caller's transaction (which holds their
    locks); returns the rows removed (or scrubbed) per table."""
    counts = await pg.fetchrow(
        ERASE_ALL, list(lead_ids), list(ids), [i.encode() for i in ids], list(account_ids)
    )
    assert counts is not None
    removed: dict[str, int] = dict(counts)
    if account_ids:
        account_keys = [a.encode() for a in account_ids]
        for lead_id in lead_ids:
            field = orjson.dumps({"lead_id": lead_id}).decode()[1:-1]
            outbox = await pg.execute(SCRUB["outbox"], field, account_keys)
            removed["outbox"] += _count(outbox)
            deliveries = await pg.execute(SCRUB["webhook_deliveries"], field, list(account_ids))
            removed["webhook_deliveries"] += _count(deliveries)
    return removed
