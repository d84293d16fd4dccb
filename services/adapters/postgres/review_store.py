"""The quarterly review's SQL: the cohort a rule-set version handed to sales, and what sales
did with it (services/reports/review.py turns these rows into the report).

The cohort: leads handed to sales under the version in the window, that is, whose first
move past `lead` (to `mql`, or straight to `sal` and beyond on a trigger such as a demo
request) was made by that version in [since, until). Their outcomes are sales feedback
applied at or after the handoff, whenever it came. "Qualified" leads for precision and
recall are those sales marked qualified in the window, whether or not they were handed off.
Every query takes ($1 since, $2 until, $3 version, $4 the stages past `lead`, $5 the outcomes
counted); the band queries take the band edges as $6.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

import asyncpg

COHORT = """
WITH cohort AS (
    SELECT DISTINCT ON (lead_id) lead_id, occurred_at AS handed_at, score_total AS score
    FROM {transitions}
    WHERE ruleset_version = $3 AND from_stage IN ('lead', 'recycled')
      AND to_stage = ANY($4::text[]) AND occurred_at >= $1 AND occurred_at < $2
    ORDER BY lead_id, occurred_at, transition_id
), outcomes AS MATERIALIZED (
    -- Materialised: computed once. Inlined into a join, a planner without statistics yet
    -- (a freshly filled table) re-ran it for every lead of the cohort.
    SELECT c.lead_id, f.outcome, min(f.at) AS first_at
    FROM cohort c
    JOIN feedback f ON f.lead_id = c.lead_id AND f.result = 'applied' AND f.at >= c.handed_at
    WHERE f.at >= $1 AND f.outcome = ANY($5::text[])
    GROUP BY c.lead_id, f.outcome
)
"""

OUTCOME_QUERY = (
    COHORT
    + """
SELECT o.outcome, count(*) AS leads,
       percentile_cont(0.5) WITHIN GROUP (ORDER BY extract(epoch FROM o.first_at - c.handed_at))
           AS median_seconds
FROM outcomes o JOIN cohort c USING (lead_id)
GROUP BY o.outcome
"""
)

BAND_QUERY = (
    COHORT
    + """
, scored AS (
    SELECT c.lead_id, c.score,
           ntile(10) OVER (ORDER BY c.score, c.lead_id) AS decile,
           width_bucket(c.score, $6::float8[]) AS band,
           EXISTS (SELECT 1 FROM outcomes o WHERE o.lead_id = c.lead_id
                   AND o.outcome = 'qualified') AS qualified,
           EXISTS (SELECT 1 FROM outcomes o WHERE o.lead_id = c.lead_id
                   AND o.outcome = 'won') AS won
    FROM cohort c
)
SELECT 'decile' AS kind, decile AS n, count(*) AS leads, min(score) AS low, max(score) AS high,
       count(*) FILTER (WHERE qualified) AS qualified, count(*) FILTER (WHERE won) AS won
FROM scored GROUP BY decile
UNION ALL
SELECT 'band', band, count(*), min(score), max(score),
       count(*) FILTER (WHERE qualified), count(*) FILTER (WHERE won)
FROM scored GROUP BY band
"""
)

# Engagement rules hit (counted) before the handoff, among leads sales won or lost.
RULE_QUERY = (
    COHORT
    + """
, decided AS (
    SELECT c.lead_id, c.handed_at,
           bool_or(o.outcome = 'won') AS won
    FROM cohort c JOIN outcomes o USING (lead_id)
    WHERE o.outcome IN ('won', 'lost')
    GROUP BY c.lead_id, c.handed_at
), hit AS (
    SELECT DISTINCT d.lead_id, d.won, h.value ->> 0 AS rule_id
    FROM decided d
    JOIN lead_events e ON e.lead_id = d.lead_id AND e.occurred_at <= d.handed_at
    CROSS JOIN LATERAL json_array_elements(e.{hits}) AS h(value)
    WHERE (h.value ->> 2)::boolean
)
SELECT rule_id,
       count(*) FILTER (WHERE won) AS won_with,
       count(*) FILTER (WHERE NOT won) AS lost_with,
       (SELECT count(*) FILTER (WHERE won) FROM decided) AS won_all,
       (SELECT count(*) FILTER (WHERE NOT won) FROM decided) AS lost_all
FROM hit GROUP BY rule_id
"""
)

PRECISION_QUERY = (
    COHORT
    + """
, qualified AS (
    SELECT DISTINCT lead_id FROM feedback
    WHERE outcome = 'qualified' AND result = 'applied' AND at >= $1 AND at < $2
)
SELECT (SELECT count(*) FROM cohort) AS handed_off,
       (SELECT count(*) FROM qualified) AS qualified,
       (SELECT count(*) FROM qualified q JOIN cohort c USING (lead_id)) AS both
"""
)


# Accounts (MQA): those the version first moved to `mqa` in the window; their outcomes are
# their member leads' feedback at or after that; "qualified" accounts for precision and recall
# are those with a member sales qualified in the window.
ACCOUNT_QUERY = """
WITH mqa AS (
    SELECT DISTINCT ON (account_id) account_id, occurred_at AS at
    FROM {account_transitions}
    WHERE ruleset_version = $3 AND to_stage = 'mqa' AND occurred_at >= $1 AND occurred_at < $2
    ORDER BY account_id, occurred_at
), member_outcomes AS MATERIALIZED (
    SELECT DISTINCT m.account_id, f.outcome
    FROM mqa m
    JOIN leads l ON l.account_id = m.account_id
    JOIN feedback f ON f.lead_id = l.lead_id AND f.result = 'applied' AND f.at >= m.at
    WHERE f.outcome IN ('qualified', 'won', 'lost')
), qualified AS MATERIALIZED (
    SELECT DISTINCT l.account_id
    FROM feedback f JOIN leads l USING (lead_id)
    WHERE f.outcome = 'qualified' AND f.result = 'applied' AND f.at >= $1 AND f.at < $2
      AND l.account_id IS NOT NULL
)
SELECT (SELECT count(*) FROM mqa) AS mqa,
       (SELECT count(*) FROM member_outcomes WHERE outcome = 'qualified') AS qualified,
       (SELECT count(*) FROM member_outcomes WHERE outcome = 'won') AS won,
       (SELECT count(*) FROM member_outcomes WHERE outcome = 'lost') AS lost,
       (SELECT count(*) FROM qualified) AS sales_qualified,
       (SELECT count(*) FROM qualified JOIN mqa USING (account_id)) AS both
"""
# Per score: the leads of the cohort each score qualified (a move two scores made counts for
# both), by fixed band of that score's total at the handoff, with what sales made of them.
SCORE_QUERY = """
WITH cohort AS (
    SELECT DISTINCT ON (lead_id) lead_id, occurred_at AS handed_at, record
    FROM {transitions}
    WHERE ruleset_version = $3 AND from_stage IN ('lead', 'recycled')
      AND to_stage = ANY($4::text[]) AND occurred_at >= $1 AND occurred_at < $2
    ORDER BY lead_id, occurred_at, transition_id
), per_score AS (
    SELECT c.lead_id, c.handed_at, q.score,
           (c.record->'scores'->q.score->>'total')::float8 AS total
    FROM cohort c,
         jsonb_array_elements_text(coalesce(c.record->'qualified_by', '[]'::jsonb)) q(score)
), outcomes AS MATERIALIZED (
    SELECT p.lead_id, p.score,
           bool_or(f.outcome = 'qualified') AS qualified, bool_or(f.outcome = 'won') AS won
    FROM per_score p
    JOIN feedback f ON f.lead_id = p.lead_id AND f.result = 'applied' AND f.at >= p.handed_at
    WHERE f.at >= $1
    GROUP BY p.lead_id, p.score
)
SELECT p.score, width_bucket(p.total, $5::float8[]) AS band, count(*) AS leads,
       count(*) FILTER (WHERE o.qualified) AS qualified, count(*) FILTER (WHERE o.won) AS won
FROM per_score p LEFT JOIN outcomes o USING (lead_id, score)
GROUP BY 1, 2
"""
LIVE = {
    "{transitions}": "transitions",
    "{account_transitions}": "account_transitions",
    "{hits}": "hits",
}
CHALLENGER = {
    "{transitions}": "challenger_transitions",
    "{account_transitions}": "challenger_account_transitions",
    "{hits}": "challenger_hits",
}


def _sql(query: str, challenger: bool) -> str:
    """The query over the live version's records, or over a challenger's own."""
    for name, table in (CHALLENGER if challenger else LIVE).items():
        query = query.replace(name, table)
    return query


# One row per decided lead of the cohort: whether the outcome was the good one ($6), and per
# rule its hits before the handoff (engagement: counted hits; fit: 1 when the lead matches).
SAMPLES_QUERY = (
    COHORT
    + """
, decided AS (
    SELECT c.lead_id, c.handed_at, bool_or(o.outcome = $6) AS good
    FROM cohort c JOIN outcomes o USING (lead_id)
    GROUP BY c.lead_id, c.handed_at
), engagement AS (
    SELECT d.lead_id, h.value ->> 0 AS rule_id, count(*)::float8 AS hits
    FROM decided d
    JOIN lead_events e ON e.lead_id = d.lead_id AND e.occurred_at <= d.handed_at
    CROSS JOIN LATERAL json_array_elements(e.{hits}) AS h(value)
    WHERE (h.value ->> 2)::boolean
    GROUP BY d.lead_id, h.value ->> 0
), fit AS (
    SELECT d.lead_id, f.rule_id, 1.0::float8 AS hits
    FROM decided d JOIN leads l USING (lead_id)
    CROSS JOIN LATERAL json_array_elements_text(l.scoring -> 'fit_rules') AS f(rule_id)
), hit AS (
    SELECT * FROM engagement UNION ALL SELECT * FROM fit
)
SELECT d.lead_id, d.good,
       coalesce(json_object_agg(h.rule_id, h.hits) FILTER (WHERE h.rule_id IS NOT NULL),
                '{}')::text AS hits
FROM decided d LEFT JOIN hit h USING (lead_id)
WHERE $8::text IS NULL OR EXISTS (
    SELECT 1 FROM transitions t
    WHERE t.lead_id = d.lead_id AND t.ruleset_version = $3 AND t.record->'qualified_by' ? $8)
GROUP BY d.lead_id, d.good
ORDER BY d.lead_id
LIMIT $7
"""
)


DECIDED_QUERY = (
    COHORT
    + """
SELECT c.lead_id, c.handed_at, bool_or(o.outcome = $6) AS good
FROM cohort c JOIN outcomes o USING (lead_id)
GROUP BY c.lead_id, c.handed_at
ORDER BY c.handed_at, c.lead_id
LIMIT $7
"""
)


@dataclass(frozen=True)
class ReviewRows:
    """What one review reads: aggregates over the cohort, one list of rows per table."""

    precision: asyncpg.Record
    outcomes: list[asyncpg.Record]
    bands: list[asyncpg.Record]
    rules: list[asyncpg.Record]
    scores: list[asyncpg.Record]
    accounts: asyncpg.Record


async def review_rows(
    pg: asyncpg.Connection,
    since: datetime,
    until: datetime,
    version: int,
    *,
    past_lead: list[str],
    outcomes: list[str],
    bands: list[float],
    challenger: bool,
) -> ReviewRows:
    """The rows of `version`'s review; with `challenger`, over the challenger's own records."""
    args = (since, until, version, past_lead, outcomes)
    precision = await pg.fetchrow(_sql(PRECISION_QUERY, challenger), *args)
    accounts = await pg.fetchrow(_sql(ACCOUNT_QUERY, challenger), since, until, version)
    assert precision is not None and accounts is not None  # aggregates: always one row
    return ReviewRows(
        precision=precision,
        outcomes=await pg.fetch(_sql(OUTCOME_QUERY, challenger), *args),
        bands=await pg.fetch(_sql(BAND_QUERY, challenger), *args, bands),
        rules=await pg.fetch(_sql(RULE_QUERY, challenger), *args),
        scores=await pg.fetch(_sql(SCORE_QUERY, challenger), *args[:4], bands),
        accounts=accounts,
    )


async def outcome_samples(
    pg: asyncpg.Connection,
    since: datetime,
    until: datetime,
    version: int,
    *,
    past_lead: list[str],
    decided: list[str],
    good: str,
    limit: int,
    score: str | None,
) -> list[asyncpg.Record]:
    """One row per lead of the cohort sales decided on (`decided` outcomes): whether the
    outcome was `good`, and its hits per rule before the handoff (a JSON object)."""
    return await pg.fetch(
        _sql(SAMPLES_QUERY, False), since, until, version, past_lead, decided, good, limit, score
    )


async def decided_leads(
    pg: asyncpg.Connection,
    since: datetime,
    until: datetime,
    version: int,
    *,
    past_lead: list[str],
    decided: list[str],
    good: str,
    limit: int,
) -> list[asyncpg.Record]:
    """The leads `version` handed off in the window that sales decided on: each one's
    handoff time and whether the outcome was `good`, oldest handoff first."""
    return await pg.fetch(
        _sql(DECIDED_QUERY, False), since, until, version, past_lead, decided, good, limit
    )
