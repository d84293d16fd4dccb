"""The journey report (docs/concepts/journey.md): leads and accounts per phase now, and for the
moves in a window: moves between phases, time in each phase, the channels that brought
leads into it, conversion from it to MQL, SQL and won, and the next-step list.

Read-only, like every report. Each window query starts from `journey_moves_by_time`; the
counts of now from the phase indexes of leads and accounts.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import asyncpg

from scoring_service.journey import JourneyBook

# The next-step list keeps, per phase, this many items.
NEXT_STEPS = 10

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


def _rate(part: int, whole: int) -> float | None:
    return round(part / whole, 4) if whole else None


async def report(
    pg: asyncpg.Connection, since: datetime, until: datetime, book: JourneyBook | None
) -> dict[str, Any]:
    now = {(r["subject"], r["phase"]): r["n"] for r in await pg.fetch(NOW_QUERY)}
    moves = await pg.fetch(MOVES_QUERY, since, until)
    times = {(r["subject"], r["to_phase"]): r for r in await pg.fetch(TIME_QUERY, since, until)}
    channels: dict[str, dict[str, int]] = {}
    for r in await pg.fetch(CHANNEL_QUERY, since, until):
        channels.setdefault(r["to_phase"], {})[r["channel"]] = r["n"]
    conversion = {r["to_phase"]: r for r in await pg.fetch(CONVERSION_QUERY, since, until)}
    totals = {
        (r["side"], r["phase"]): int(r["n"]) for r in await pg.fetch(TOTALS_QUERY, since, until)
    }
    steps: dict[str, list[dict[str, Any]]] = {}
    for r in await pg.fetch(NEXT_STEP_QUERY, since, until, NEXT_STEPS):
        steps.setdefault(r["phase"], []).append(
            {
                "content": r["item"],
                "moved_on": r["moved"],
                "stalled": r["stalled"],
                "lift": round(r["lift"], 3),
            }
        )
    # The rule set's phases in their order; a phase only the history knows (a version that
    # renamed one) after them.
    ordered = list(book.phases) if book is not None else []
    names = dict(zip(book.phases, book.names, strict=True)) if book is not None else {}
    known = set(ordered)
    extra = {phase for (_, phase) in now} | {r["to_phase"] for r in moves} | set(conversion)
    ordered += sorted(p for p in extra if p is not None and p not in known)
    phases = []
    for phase in ordered:
        converted = conversion.get(phase)
        entered = converted["entered"] if converted else 0
        lead_time = times.get(("lead", phase))
        account_time = times.get(("account", phase))
        phases.append(
            {
                "phase": phase,
                "name": names.get(phase, phase.replace("_", " ")),
                "leads_now": now.get(("lead", phase), 0),
                "accounts_now": now.get(("account", phase), 0),
                "entered": lead_time["entered"] if lead_time else 0,
                "median_seconds_in_phase": (
                    _seconds(lead_time["median_seconds"]) if lead_time else None
                ),
                "accounts_entered": account_time["entered"] if account_time else 0,
                "accounts_median_seconds_in_phase": (
                    _seconds(account_time["median_seconds"]) if account_time else None
                ),
                "channels": dict(
                    sorted(channels.get(phase, {}).items(), key=lambda item: (-item[1], item[0]))
                ),
                "conversion": {
                    "entered": entered,
                    **{
                        stage: {
                            "reached": converted[stage] if converted else 0,
                            "rate": _rate(converted[stage] if converted else 0, entered),
                        }
                        for stage in ("mql", "sql", "won")
                    },
                },
                "moved_on": totals.get(("moved", phase), 0),
                "stalled": totals.get(("stalled", phase), 0),
                "next_steps": steps.get(phase, []),
            }
        )
    return {
        "since": since,
        "until": until,
        "phases": phases,
        "moves": [
            {
                "subject": r["subject"],
                "from_phase": r["from_phase"],
                "to_phase": r["to_phase"],
                "reason": r["reason"],
                "count": r["n"],
            }
            for r in sorted(
                moves,
                key=lambda r: (
                    r["subject"],
                    -r["n"],
                    r["from_phase"] or "",
                    r["to_phase"] or "",
                ),
            )
        ],
    }


def _seconds(value: Any) -> float | None:
    return round(float(value), 3) if value is not None else None
