"""The read queries behind the HTTP API and the console, in one place: the funnel report's
rows, rule-set versions, the audit log, leads and their history, accounts.

Nothing here writes or locks: reads see committed state and never wait for a writer.
Every funnel query starts from an index: transitions by time (the window), transitions by
lead and time (what happened next to each lead), handoffs by entry time, feedback by time.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import asyncpg
import orjson

from scoring_service.state import Account, LeadState
from services.adapters.postgres import lead_store

# -- the funnel report (services/reports/funnel.py shapes it) ---------------------------------

# Time in stage: from entering a stage to the lead's next transition. One pass over the
# transitions since `since`, sorted by lead, instead of a lookup per transition.
# The same questions of leads (`transitions`, by lead_id) and accounts (`account_transitions`,
# by account_id): {table} and {who} are filled in from those two pairs only.
STAGE_QUERY = """
WITH ordered AS (
    SELECT to_stage, occurred_at,
           lead(occurred_at) OVER (PARTITION BY {who} ORDER BY occurred_at, transition_id)
               AS left_at
    FROM {table} WHERE occurred_at >= $1
), entered AS MATERIALIZED (
    SELECT to_stage, extract(epoch FROM left_at - occurred_at) AS seconds
    FROM ordered WHERE occurred_at < $2
)
SELECT to_stage,
       count(*) AS entered,
       percentile_cont(0.5) WITHIN GROUP (ORDER BY seconds) AS median_seconds,
       percentile_cont(0.9) WITHIN GROUP (ORDER BY seconds) AS p90_seconds
FROM entered GROUP BY to_stage
"""

# Conversion: of the leads (accounts) entering a stage in the window, those that reached the
# next stage at or after their first entry, at any time since. Two grouped scans and a hash
# join: a correlated EXISTS per entry was planned on the stage index and took 280 ms on the
# benchmark's 20,000 leads.
CONVERSION_QUERY = """
WITH entries AS (
    SELECT e.{who} AS who, e.to_stage AS from_stage, v.next_stage,
           min(e.occurred_at) AS first_at
    FROM {table} e
    JOIN unnest($3::text[], $4::text[]) AS v(stage, next_stage) ON v.stage = e.to_stage
    WHERE e.occurred_at >= $1 AND e.occurred_at < $2
    GROUP BY 1, 2, 3
), reached AS (
    SELECT {who} AS who, to_stage, max(occurred_at) AS last_at
    FROM {table} WHERE to_stage = ANY($4::text[]) AND occurred_at >= $1
    GROUP BY 1, 2
)
SELECT en.from_stage,
       count(*) AS entered,
       count(*) FILTER (WHERE r.last_at >= en.first_at) AS converted
FROM entries en
LEFT JOIN reached r ON r.who = en.who AND r.to_stage = en.next_stage
GROUP BY en.from_stage
"""

SLA_QUERY = """
SELECT count(*) AS handoffs,
       count(*) FILTER (WHERE answered_at IS NOT NULL AND answered_at <= respond_by) AS in_time,
       count(*) FILTER (WHERE answered_at > respond_by) AS late,
       count(*) FILTER (WHERE answered_at IS NULL AND status = 'breached') AS unanswered,
       count(*) FILTER (WHERE status = 'open') AS open,
       count(*) FILTER (WHERE status = 'superseded' AND answered_at IS NULL) AS superseded,
       percentile_cont(0.5) WITHIN GROUP (ORDER BY extract(epoch FROM answered_at - entered_at))
           FILTER (WHERE answered_at IS NOT NULL) AS median_follow_up_seconds
FROM handoffs WHERE entered_at >= $1 AND entered_at < $2
"""

REJECTIONS_QUERY = """
SELECT reason, count(*) AS count FROM feedback
WHERE outcome = 'rejected' AND result = 'applied' AND at >= $1 AND at < $2
GROUP BY reason ORDER BY count DESC, reason
"""

# Entries into mql, sal and sql in the window by the score that qualified them (a move two
# scores made counts for both), and by the lead's grade label at the move.
BY_SCORE_QUERY = """
SELECT t.to_stage, q.score, count(*) AS entries
FROM transitions t, jsonb_array_elements_text(coalesce(t.record->'qualified_by', '[]')) q(score)
WHERE t.occurred_at >= $1 AND t.occurred_at < $2 AND t.to_stage IN ('mql', 'sal', 'sql')
GROUP BY 1, 2
"""

BY_LABEL_QUERY = """
SELECT t.to_stage, t.record->>'label' AS label, count(*) AS entries
FROM transitions t
WHERE t.occurred_at >= $1 AND t.occurred_at < $2 AND t.to_stage IN ('mql', 'sal', 'sql')
  AND t.record->>'label' IS NOT NULL
GROUP BY 1, 2
"""


def _stage_table(accounts: bool) -> dict[str, str]:
    return (
        {"table": "account_transitions", "who": "account_id"}
        if accounts
        else {"table": "transitions", "who": "lead_id"}
    )


async def stage_rows(
    pg: asyncpg.Connection, since: datetime, until: datetime, *, accounts: bool
) -> list[asyncpg.Record]:
    """Per stage of leads (or accounts): entries in the window, median and p90 time in it."""
    return await pg.fetch(STAGE_QUERY.format(**_stage_table(accounts)), since, until)


async def conversion_rows(
    pg: asyncpg.Connection,
    since: datetime,
    until: datetime,
    following: dict[str, str],
    *,
    accounts: bool,
) -> list[asyncpg.Record]:
    """Per stage: entries in the window and how many went on to the stage `following` it."""
    return await pg.fetch(
        CONVERSION_QUERY.format(**_stage_table(accounts)),
        since,
        until,
        list(following),
        list(following.values()),
    )


async def follow_up_row(pg: asyncpg.Connection, since: datetime, until: datetime) -> asyncpg.Record:
    """Handoffs of the window by how sales followed them up."""
    row = await pg.fetchrow(SLA_QUERY, since, until)
    assert row is not None  # aggregates without GROUP BY: always one row
    return row


async def rejection_rows(
    pg: asyncpg.Connection, since: datetime, until: datetime
) -> list[asyncpg.Record]:
    return await pg.fetch(REJECTIONS_QUERY, since, until)


async def entries_by_score(
    pg: asyncpg.Connection, since: datetime, until: datetime
) -> list[asyncpg.Record]:
    return await pg.fetch(BY_SCORE_QUERY, since, until)


async def entries_by_label(
    pg: asyncpg.Connection, since: datetime, until: datetime
) -> list[asyncpg.Record]:
    return await pg.fetch(BY_LABEL_QUERY, since, until)


# -- rule sets and the audit log --------------------------------------------------------

RULESET_COLUMNS = (
    "version, name, published_by, published_at, comment, document::text AS document, source"
)


async def ruleset_version(pg: asyncpg.Connection, version: int) -> asyncpg.Record | None:
    return await pg.fetchrow(f"SELECT {RULESET_COLUMNS} FROM rulesets WHERE version = $1", version)


async def ruleset_versions(pg: asyncpg.Connection) -> list[asyncpg.Record]:
    """Every published version, newest first."""
    return await pg.fetch(f"SELECT {RULESET_COLUMNS} FROM rulesets ORDER BY version DESC")


async def activation(pg: asyncpg.Connection) -> asyncpg.Record | None:
    return await pg.fetchrow("SELECT activated_by, activated_at FROM active_ruleset")


async def previous_active(pg: asyncpg.Connection, current: int) -> int | None:
    """The version that was live before `current` was last activated (what a roll-back
    goes back to), as the activation's audit entry recorded it."""
    value = await pg.fetchval(
        "SELECT detail->>'previous' FROM audit_log WHERE action = 'ruleset.activate' "
        "AND target = $1 ORDER BY id DESC LIMIT 1",
        str(current),
    )
    return int(value) if value is not None and value.isdigit() else None


async def audit_page(pg: asyncpg.Connection, *, before: int, limit: int) -> list[asyncpg.Record]:
    """Audit entries with ids below `before`, newest first."""
    return await pg.fetch(
        "SELECT id, at, actor, action, target, detail::text AS detail FROM audit_log "
        "WHERE id < $1 ORDER BY id DESC LIMIT $2",
        before,
        limit,
    )


# -- leads ------------------------------------------------------------------------------


async def canonical_lead_id(pg: asyncpg.Connection, lead_id: str) -> str:
    """The lead an id counts for now, following identity links."""
    links = await lead_store.load_links(pg, [lead_id])
    seen = {lead_id}
    while lead_id in links and links[lead_id] not in seen:
        lead_id = links[lead_id]
        seen.add(lead_id)
    return lead_id


# A lead's total in one score: the default one's columns, or a named one's total as the
# engine kept it in the scoring document ($n is the score's name, a bind parameter).
def _total_in(param: str) -> str:
    return (
        f"(CASE WHEN {param}::text IS NULL THEN fit + engagement "
        f"ELSE coalesce((scoring->'totals'->>{param}::text)::float8, 0) END)"
    )


LIST_COLUMNS = (
    "lead_id, stage, account_id, fit, engagement, as_of, updated_at, "
    "(scoring->'totals')::text AS totals, scoring->>'label' AS label, journey_phase"
)


async def lead_page(
    pg: asyncpg.Connection,
    *,
    after: str,
    stage: str | None,
    min_score: float | None,
    limit: int,
    score: str | None = None,
    label: str | None = None,
    phase: str | None = None,
) -> list[asyncpg.Record]:
    """Leads in id order after `after`, filtered by stage, label, buyer-journey phase and a
    minimum total in `score` (by default the default score)."""
    return await pg.fetch(
        f"SELECT {LIST_COLUMNS} "
        "FROM leads WHERE lead_id > $1 AND ($2::text IS NULL OR stage = $2) "
        f"AND ($3::float8 IS NULL OR {_total_in('$5')} >= $3) "
        "AND ($6::text IS NULL OR scoring->>'label' = $6) "
        "AND ($7::text IS NULL OR journey_phase = $7) ORDER BY lead_id LIMIT $4",
        after,
        stage,
        min_score,
        limit,
        score,
        label,
        phase,
    )


async def lead_page_by_label(
    pg: asyncpg.Connection,
    *,
    after: tuple[str, str] | None,
    stage: str | None,
    limit: int,
    phase: str | None = None,
) -> list[asyncpg.Record]:
    """Leads by grade label, best first (A1, A2, ... D3; leads without one last), ties by
    id, after the (label, id) of `after`."""
    label, last_id = after if after is not None else (None, "")
    return await pg.fetch(
        f"SELECT * FROM (SELECT {LIST_COLUMNS}, coalesce(scoring->>'label', 'Z') AS sort_label "
        "FROM leads WHERE ($3::text IS NULL OR stage = $3) "
        "AND ($5::text IS NULL OR journey_phase = $5)) l "
        "WHERE $1::text IS NULL OR sort_label > $1 OR (sort_label = $1 AND lead_id > $2) "
        "ORDER BY sort_label, lead_id LIMIT $4",
        label,
        last_id,
        stage,
        limit,
        phase,
    )


async def lead_page_by_score(
    pg: asyncpg.Connection,
    *,
    after: tuple[float, str] | None,
    stage: str | None,
    min_score: float | None,
    limit: int,
    score: str | None = None,
    label: str | None = None,
    phase: str | None = None,
) -> list[asyncpg.Record]:
    """Leads by total score (the default one, or a named `score`), highest first, ties by
    id, after the (total, id) of `after`.

    The total is the stored one (engagement as of each lead's last event), the value the
    index orders by; `total` is returned as PostgreSQL computed it, so a cursor made from it
    compares equal on the next page.
    """
    total, last_id = after if after is not None else (None, "")
    if score is None and label is None:
        # The default score: the expression the leads_by_score index orders by.
        return await pg.fetch(
            f"SELECT {LIST_COLUMNS}, fit + engagement AS total FROM leads "
            "WHERE ($1::float8 IS NULL OR fit + engagement < $1 "
            "       OR (fit + engagement = $1 AND lead_id > $2)) "
            "AND ($3::text IS NULL OR stage = $3) "
            "AND ($4::float8 IS NULL OR fit + engagement >= $4) "
            "AND ($6::text IS NULL OR journey_phase = $6) "
            "ORDER BY fit + engagement DESC, lead_id LIMIT $5",
            total,
            last_id,
            stage,
            min_score,
            limit,
            phase,
        )
    # A named score (or a label): no index orders by it, so the leads are sorted here.
    in_score = _total_in("$6")
    return await pg.fetch(
        f"SELECT * FROM (SELECT {LIST_COLUMNS}, {in_score} AS total FROM leads "
        "WHERE ($3::text IS NULL OR stage = $3) "
        "AND ($7::text IS NULL OR scoring->>'label' = $7) "
        "AND ($8::text IS NULL OR journey_phase = $8)) l "
        "WHERE ($1::float8 IS NULL OR total < $1 OR (total = $1 AND lead_id > $2)) "
        "AND ($4::float8 IS NULL OR total >= $4) "
        "ORDER BY total DESC, lead_id LIMIT $5",
        total,
        last_id,
        stage,
        min_score,
        limit,
        score,
        label,
        phase,
    )


async def lead(pg: asyncpg.Connection, lead_id: str) -> LeadState | None:
    return (await lead_store.load_leads(pg, [lead_id])).get(lead_id)


async def open_handoff(pg: asyncpg.Connection, lead_id: str) -> asyncpg.Record | None:
    """The lead's open follow-up deadline, if sales has one to meet."""
    return await pg.fetchrow(
        "SELECT stage, owner, entered_at, respond_by FROM handoffs "
        "WHERE lead_id = $1 AND status = 'open' ORDER BY respond_by LIMIT 1",
        lead_id,
    )


async def lead_events(pg: asyncpg.Connection, lead_id: str, *, limit: int) -> list[asyncpg.Record]:
    """The lead's last `limit` scored events, oldest first."""
    return await pg.fetch(
        "SELECT * FROM (SELECT id, message_id, type, occurred_at, hits::text AS hits, "
        "points, ruleset_version, scored_at, held, superseded FROM lead_events "
        "WHERE lead_id = $1 "
        "ORDER BY id DESC LIMIT $2) recent ORDER BY id",
        lead_id,
        limit,
    )


async def lead_transitions(pg: asyncpg.Connection, lead_id: str) -> list[asyncpg.Record]:
    """The lead's transition records as published, oldest first."""
    return await pg.fetch(
        "SELECT record::text AS record FROM transitions WHERE lead_id = $1 "
        "ORDER BY occurred_at, transition_id",
        lead_id,
    )


MAX_LISTED_ADJUSTMENTS = 1000


async def lead_adjustments(pg: asyncpg.Connection, lead_id: str) -> list[asyncpg.Record]:
    """The adjustments made to the lead's scores (audit entries), oldest first; the latest
    MAX_LISTED_ADJUSTMENTS."""
    return await pg.fetch(
        "SELECT * FROM (SELECT id, at, actor, detail::text AS detail FROM audit_log "
        "WHERE action = 'lead.adjust' AND target = $1 ORDER BY id DESC LIMIT $2) a ORDER BY id",
        lead_id,
        MAX_LISTED_ADJUSTMENTS,
    )


ACCOUNT_SUMMARY = (
    "account_id, traits->>'name' AS name, stage, fit, engagement, coverage, score, "
    "roles_covered, member_count, updated_at, (scoring->'totals')::text AS totals, "
    "journey_phase"
)


async def account_page(
    pg: asyncpg.Connection,
    *,
    after: tuple[float, str] | None,
    after_id: str,
    by_score: bool,
    stage: str | None,
    min_score: float | None,
    role_missing: str | None,
    limit: int,
    score_name: str | None = None,
    phase: str | None = None,
) -> list[asyncpg.Record]:
    """Accounts in id order after `after_id`, or by score highest first (ties by id) after
    the (score, id) of `after`, filtered by stage, minimum score, a role not covered and
    buyer-journey phase; with `score_name`, by that named score (as kept when the account
    was last written)."""

    def filters(phase_param: str) -> str:
        return (
            "($1::text IS NULL OR stage = $1) "
            "AND ($2::float8 IS NULL OR score >= $2) "
            "AND ($3::text IS NULL OR NOT ($3 = ANY(roles_covered))) "
            f"AND ({phase_param}::text IS NULL OR journey_phase = {phase_param}) "
        )

    common = (stage, min_score, role_missing, limit)
    if by_score and score_name is not None:
        total, last_id = after if after is not None else (None, "")
        return await pg.fetch(
            f"SELECT * FROM (SELECT {ACCOUNT_SUMMARY}, "
            "coalesce((scoring->'totals'->>$7::text)::float8, 0) AS total FROM accounts "
            "WHERE ($1::text IS NULL OR stage = $1) "
            "AND ($3::text IS NULL OR NOT ($3 = ANY(roles_covered))) "
            "AND ($8::text IS NULL OR journey_phase = $8)) a "
            "WHERE ($2::float8 IS NULL OR total >= $2) "
            "AND ($5::float8 IS NULL OR total < $5 OR (total = $5 AND account_id > $6)) "
            "ORDER BY total DESC, account_id LIMIT $4",
            *common,
            total,
            last_id,
            score_name,
            phase,
        )
    if by_score:
        score, last_id = after if after is not None else (None, "")
        return await pg.fetch(
            f"SELECT {ACCOUNT_SUMMARY} FROM accounts WHERE {filters('$7')}"
            "AND ($5::float8 IS NULL OR score < $5 OR (score = $5 AND account_id > $6)) "
            "ORDER BY score DESC, account_id LIMIT $4",
            *common,
            score,
            last_id,
            phase,
        )
    return await pg.fetch(
        f"SELECT {ACCOUNT_SUMMARY} FROM accounts WHERE {filters('$6')}AND account_id > $5 "
        "ORDER BY account_id LIMIT $4",
        *common,
        after_id,
        phase,
    )


async def account(pg: asyncpg.Connection, account_id: str) -> Account | None:
    return (await lead_store.load_accounts(pg, [account_id])).get(account_id)


async def account_transitions(pg: asyncpg.Connection, account_id: str) -> list[asyncpg.Record]:
    """The account's transition records as published, oldest first."""
    return await pg.fetch(
        "SELECT record::text AS record FROM account_transitions WHERE account_id = $1 ORDER BY seq",
        account_id,
    )


JOURNEY_COLUMNS = (
    "subject, subject_id, seq, from_phase, to_phase, reason, rule_id, caused_by, content, "
    "channel, seen::text AS seen, occurred_at, ruleset_version"
)
MAX_LISTED_MOVES = 1000


async def journey_moves(
    pg: asyncpg.Connection, subject: str, subject_id: str
) -> list[dict[str, Any]]:
    """A lead's or an account's buyer-journey moves, oldest first (the latest
    MAX_LISTED_MOVES)."""
    rows = await pg.fetch(
        f"SELECT * FROM (SELECT {JOURNEY_COLUMNS} FROM journey_moves "
        "WHERE subject = $1 AND subject_id = $2 ORDER BY seq DESC LIMIT $3) m ORDER BY seq",
        subject,
        subject_id,
        MAX_LISTED_MOVES,
    )
    return [{**dict(r), "seen": orjson.loads(r["seen"])} for r in rows]


async def leads(pg: asyncpg.Connection, lead_ids: list[str]) -> dict[str, LeadState]:
    return await lead_store.load_leads(pg, lead_ids)
