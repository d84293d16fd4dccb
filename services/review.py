"""The quarterly review's outcome report: how well a rule-set version's handoffs predicted
what sales did with them. Plain SQL over what is stored (transitions, feedback, history).

The cohort: leads handed to sales under the version in the window, that is, whose first
move past `lead` (to `mql`, or straight to `sal` and beyond on a trigger such as a demo
request) was made by that version in [since, until). Their outcomes are sales feedback
applied at or after the handoff, whenever it came. "Qualified" leads for precision and
recall are those sales marked qualified in the window, whether or not they were handed off.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import asyncpg
import orjson

OUTCOMES = ("accepted", "qualified", "converted", "won", "lost")
# Fixed score bands at handoff: [low, high) with the last open-ended.
BANDS = (0.0, 25.0, 50.0, 75.0, 100.0, 150.0)
PAST_LEAD = ("mql", "sal", "sql", "opportunity", "customer")

COHORT = """
WITH cohort AS (
    SELECT DISTINCT ON (lead_id) lead_id, occurred_at AS handed_at, score_total AS score
    FROM transitions
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
    CROSS JOIN LATERAL json_array_elements(e.hits) AS h(value)
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
    CROSS JOIN LATERAL json_array_elements(e.hits) AS h(value)
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
GROUP BY d.lead_id, d.good
ORDER BY d.lead_id
LIMIT $7
"""
)
# (good outcome, the bad one) a proposal can learn from.
TARGETS = {"won": ("won", "lost"), "qualified": ("qualified", "rejected")}
MAX_SAMPLES = 200_000


async def outcome_samples(
    pg: asyncpg.Connection, since: datetime, until: datetime, version: int, target: str
) -> list[tuple[str, bool, dict[str, float]]]:
    """(lead, good outcome?, hits per rule) for each lead `version` handed off in the window
    that sales decided on (won or lost; or qualified or rejected)."""
    good, bad = TARGETS[target]
    rows = await pg.fetch(
        SAMPLES_QUERY, since, until, version, list(PAST_LEAD), [good, bad], good, MAX_SAMPLES
    )
    return [(r["lead_id"], bool(r["good"]), orjson.loads(r["hits"])) for r in rows]


def _ratio(part: int, whole: int) -> float | None:
    return round(part / whole, 4) if whole else None


async def review_report(
    pg: asyncpg.Connection, since: datetime, until: datetime, version: int
) -> dict[str, Any]:
    args = (since, until, version, list(PAST_LEAD), list(OUTCOMES))
    precision = await pg.fetchrow(PRECISION_QUERY, *args)
    assert precision is not None  # aggregates without GROUP BY: always one row
    handed_off = int(precision["handed_off"])
    outcome_rows = {r["outcome"]: r for r in await pg.fetch(OUTCOME_QUERY, *args)}
    outcomes = {
        outcome: {
            "leads": int(row["leads"]) if row else 0,
            "share": _ratio(int(row["leads"]) if row else 0, handed_off),
            "median_seconds": (
                round(float(row["median_seconds"]), 3)
                if row and row["median_seconds"] is not None
                else None
            ),
        }
        for outcome in OUTCOMES
        for row in [outcome_rows.get(outcome)]
    }
    bands: dict[str, list[dict[str, Any]]] = {"deciles": [], "fixed": []}
    for row in await pg.fetch(BAND_QUERY, *args, list(BANDS)):
        leads = int(row["leads"])
        figures = {
            "leads": leads,
            "qualified_share": _ratio(int(row["qualified"]), leads),
            "won_share": _ratio(int(row["won"]), leads),
        }
        if row["kind"] == "decile":
            bands["deciles"].append(
                {"decile": row["n"], "low": row["low"], "high": row["high"], **figures}
            )
        else:
            index = int(row["n"])  # width_bucket: 1 is [BANDS[0], BANDS[1]), 0 below them
            low = BANDS[index - 1] if index >= 1 else None
            high = BANDS[index] if index < len(BANDS) else None
            bands["fixed"].append({"from": low, "to": high, **figures})
    bands["deciles"].sort(key=lambda b: b["decile"])
    bands["fixed"].sort(key=lambda b: -1.0 if b["from"] is None else b["from"])
    rules = []
    for row in await pg.fetch(RULE_QUERY, *args):
        won_with, lost_with = int(row["won_with"]), int(row["lost_with"])
        won_all, lost_all = int(row["won_all"]), int(row["lost_all"])
        base = won_all / (won_all + lost_all) if won_all + lost_all else None
        with_rule = won_with / (won_with + lost_with) if won_with + lost_with else None
        rules.append(
            {
                "rule_id": row["rule_id"],
                "won_leads_hit": won_with,
                "lost_leads_hit": lost_with,
                "won_share_hit": _ratio(won_with, won_all),
                "lost_share_hit": _ratio(lost_with, lost_all),
                # How much likelier a lead that hit the rule was won than any decided lead.
                "lift": round(with_rule / base, 4) if with_rule is not None and base else None,
            }
        )
    rules.sort(key=lambda r: (-(r["lift"] or 0.0), r["rule_id"]))
    qualified, both = int(precision["qualified"]), int(precision["both"])
    return {
        "version": version,
        "since": since,
        "until": until,
        "handed_off": handed_off,
        "outcomes": outcomes,
        "score_bands": bands,
        "rules": rules,
        "mql_definition": {
            "handed_off": handed_off,
            "sales_qualified": qualified,
            "qualified_and_handed_off": both,
            "missed": qualified - both,
            "precision": _ratio(both, handed_off),
            "recall": _ratio(both, qualified),
        },
    }
