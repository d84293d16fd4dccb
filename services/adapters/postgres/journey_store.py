"""The journey report's SQL (services/reports/journey_report.py turns the rows into the
report): each window query starts from `journey_moves_by_time`; the counts of now come from
the phase indexes of leads and accounts.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

import asyncpg

NOW_QUERY = """
SELECT 'lead' AS subject, journey_phase AS phase, count(*) AS n
FROM leads WHERE journey_phase IS NOT NULL GROUP BY 2
UNION ALL
SELECT 'account', journey_phase, count(*)
FROM accounts WHERE journey_phase IS NOT NULL GROUP BY 2
"""

MOVES_QUERY = """
SELECT subject, from_phase, to_phase, reason, count(*) AS n
FROM journey_moves WHERE occurred_at >= $1 AND occurred_at < $2
GROUP BY 1, 2, 3, 4
"""

# Time in phase: from entering a phase to the subject's next move, for entries in the
# window (the next move may come after it). Stays not over yet have no time and do not count.
# `entered` counts people (and accounts), each once per phase.
TIME_QUERY = """
WITH ordered AS (
    SELECT m.subject, m.to_phase, m.occurred_at,
           -- A person counts once: an anonymous visitor's moves are the merged lead's.
           coalesce(l.lead_id, m.subject_id) AS who,
           lead(m.occurred_at) OVER (PARTITION BY m.subject, m.subject_id ORDER BY m.seq)
               AS left_at
    FROM journey_moves m
    LEFT JOIN identity_links l ON m.subject = 'lead' AND l.alias_id = m.subject_id
    WHERE m.occurred_at >= $1
), entered AS MATERIALIZED (
    SELECT subject, to_phase, who, extract(epoch FROM left_at - occurred_at) AS seconds
    FROM ordered WHERE occurred_at < $2
)
SELECT subject, to_phase,
       count(DISTINCT who) AS entered,
       percentile_cont(0.5) WITHIN GROUP (ORDER BY seconds) AS median_seconds
FROM entered GROUP BY 1, 2
"""

# The channel of the events that moved leads into each phase.
CHANNEL_QUERY = """
SELECT to_phase, coalesce(channel, 'direct') AS channel, count(*) AS n
FROM journey_moves
WHERE subject = 'lead' AND reason = 'evidence' AND occurred_at >= $1 AND occurred_at < $2
GROUP BY 1, 2
"""

# Of the leads entering a phase in the window, those that reached mql, sql and customer
# (won) at or after their first entry, at any time since: two grouped scans and a hash
# join, as the funnel's conversion.
CONVERSION_QUERY = """
WITH entries AS (
    -- A person counts once: an anonymous visitor's moves count as the lead it was merged
    -- into (identity_links points each merged id at the lead that took it in).
    SELECT coalesce(l.lead_id, m.subject_id) AS who, m.to_phase, min(m.occurred_at) AS first_at
    FROM journey_moves m LEFT JOIN identity_links l ON l.alias_id = m.subject_id
    WHERE m.subject = 'lead' AND m.occurred_at >= $1 AND m.occurred_at < $2
    GROUP BY 1, 2
), reached AS (
    SELECT lead_id AS who, to_stage, max(occurred_at) AS last_at
    FROM transitions WHERE to_stage IN ('mql', 'sql', 'customer') AND occurred_at >= $1
    GROUP BY 1, 2
)
SELECT e.to_phase,
       count(DISTINCT e.who) AS entered,
       count(*) FILTER (WHERE r.to_stage = 'mql' AND r.last_at >= e.first_at) AS mql,
       count(*) FILTER (WHERE r.to_stage = 'sql' AND r.last_at >= e.first_at) AS sql,
       count(*) FILTER (WHERE r.to_stage = 'customer' AND r.last_at >= e.first_at) AS won
FROM entries e LEFT JOIN reached r ON r.who = e.who
GROUP BY 1
"""

# What leads do next. Per phase, the leads that moved on from it in the window (forward,
# on evidence) against those that did not: fell back from it in the window, or are in it
# now. Each side counts the leads that saw an item while in the phase (`seen` holds
# distinct items). Lift: the share of movers that saw it over the share of the others,
# the latter with one added to both counts, so an item no stalled lead saw ranks by its
# movers' share instead of dividing by zero.
NEXT_STEP_QUERY = """
WITH movers AS (
    SELECT from_phase AS phase, seen FROM journey_moves
    WHERE subject = 'lead' AND reason = 'evidence' AND from_phase IS NOT NULL
      AND occurred_at >= $1 AND occurred_at < $2
), stalled AS (
    SELECT from_phase AS phase, seen FROM journey_moves
    WHERE subject = 'lead' AND reason = 'quiet' AND occurred_at >= $1 AND occurred_at < $2
    UNION ALL
    SELECT journey_phase, (scoring -> 'journey' -> 'seen')::jsonb
    FROM leads WHERE journey_phase IS NOT NULL
), moved_totals AS (
    SELECT phase, count(*) AS n FROM movers GROUP BY 1
), stalled_totals AS (
    SELECT phase, count(*) AS n FROM stalled GROUP BY 1
), moved_items AS (
    SELECT phase, item, count(*) AS n
    FROM movers, jsonb_array_elements_text(movers.seen) AS item GROUP BY 1, 2
), stalled_items AS (
    SELECT phase, item, count(*) AS n
    FROM stalled, jsonb_array_elements_text(coalesce(stalled.seen, '[]')) AS item
    GROUP BY 1, 2
), lifted AS (
    SELECT m.phase, m.item, m.n AS moved, coalesce(s.n, 0) AS stalled,
           mt.n AS moved_total, coalesce(st.n, 0) AS stalled_total,
           (m.n::float8 / mt.n) / ((coalesce(s.n, 0) + 1)::float8 / (coalesce(st.n, 0) + 1))
               AS lift
    FROM moved_items m
    JOIN moved_totals mt USING (phase)
    LEFT JOIN stalled_items s USING (phase, item)
    LEFT JOIN stalled_totals st USING (phase)
), ranked AS (
    SELECT *, row_number() OVER (PARTITION BY phase ORDER BY lift DESC, moved DESC, item)
        AS place
    FROM lifted
)
SELECT * FROM ranked WHERE place <= $3 ORDER BY phase, place
"""

TOTALS_QUERY = """
SELECT 'moved' AS side, from_phase AS phase, count(*) AS n FROM journey_moves
WHERE subject = 'lead' AND reason = 'evidence' AND from_phase IS NOT NULL
  AND occurred_at >= $1 AND occurred_at < $2
GROUP BY 2
UNION ALL
SELECT 'stalled', phase, sum(n) FROM (
    SELECT from_phase AS phase, count(*) AS n FROM journey_moves
    WHERE subject = 'lead' AND reason = 'quiet' AND occurred_at >= $1 AND occurred_at < $2
    GROUP BY 1
    UNION ALL
    SELECT journey_phase, count(*) FROM leads WHERE journey_phase IS NOT NULL GROUP BY 1
) s GROUP BY 2
"""


@dataclass(frozen=True)
class JourneyRows:
    """What one journey report reads, one list of rows per query."""

    now: list[asyncpg.Record]
    moves: list[asyncpg.Record]
    times: list[asyncpg.Record]
    channels: list[asyncpg.Record]
    conversion: list[asyncpg.Record]
    totals: list[asyncpg.Record]
    next_steps: list[asyncpg.Record]


async def journey_rows(
    pg: asyncpg.Connection, since: datetime, until: datetime, *, next_steps: int
) -> JourneyRows:
    """The rows of the journey report for moves in [since, until); `next_steps` items per
    phase in the next-step list."""
    return JourneyRows(
        now=await pg.fetch(NOW_QUERY),
        moves=await pg.fetch(MOVES_QUERY, since, until),
        times=await pg.fetch(TIME_QUERY, since, until),
        channels=await pg.fetch(CHANNEL_QUERY, since, until),
        conversion=await pg.fetch(CONVERSION_QUERY, since, until),
        totals=await pg.fetch(TOTALS_QUERY, since, until),
        next_steps=await pg.fetch(NEXT_STEP_QUERY, since, until, next_steps),
    )
