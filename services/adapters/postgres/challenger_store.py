"""A challenger version's rows (services/pipeline/challenger.py says what a challenger is):
the one `challenger` row, its own lead and account state, its stage changes, and taking
its state over as the live one when it is activated."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

import asyncpg
import orjson

from stage_router.records import AccountTransitionDoc, TransitionDoc

LEADS = "challenger_leads"
ACCOUNTS = "challenger_accounts"


async def running(pg: asyncpg.Connection) -> asyncpg.Record | None:
    return await pg.fetchrow(
        "SELECT version, started_by, started_at, warmed_at FROM challenger WHERE id = 1"
    )


async def warm_progress(pg: asyncpg.Connection) -> tuple[int, int]:
    """(leads with challenger state, live leads)."""
    row = await pg.fetchrow(
        f"SELECT (SELECT count(*) FROM {LEADS}) AS warm, (SELECT count(*) FROM leads) AS live"
    )
    assert row is not None
    return int(row["warm"]), int(row["live"])


async def journey_phase_counts(pg: asyncpg.Connection) -> list[asyncpg.Record]:
    """Leads per buyer-journey phase: (side 'live' or 'challenger', phase, n)."""
    return await pg.fetch(
        "SELECT 'live' AS side, journey_phase AS phase, count(*) AS n FROM leads "
        "WHERE journey_phase IS NOT NULL GROUP BY 2 "
        f"UNION ALL SELECT 'challenger', journey_phase, count(*) FROM {LEADS} "
        "WHERE journey_phase IS NOT NULL GROUP BY 2"
    )


async def clear_state(pg: asyncpg.Connection) -> None:
    await pg.execute(f"DELETE FROM {LEADS}")
    await pg.execute(f"DELETE FROM {ACCOUNTS}")


async def begin(pg: asyncpg.Connection, version: int, *, by: str) -> None:
    """Make `version` the challenger, from an empty state."""
    await clear_state(pg)
    # A run before this one (of any version) left its hits on the history.
    await pg.execute(
        "UPDATE lead_events SET challenger_hits = NULL WHERE challenger_hits IS NOT NULL"
    )
    # A second run of the same version starts its record of stage changes afresh.
    await pg.execute("DELETE FROM challenger_transitions WHERE ruleset_version = $1", version)
    await pg.execute(
        "DELETE FROM challenger_account_transitions WHERE ruleset_version = $1", version
    )
    await pg.execute(
        "INSERT INTO challenger (id, version, started_by) VALUES (1, $1, $2)", version, by
    )


async def end(pg: asyncpg.Connection) -> None:
    """No challenger any more, and none of its state (its stage changes stay)."""
    await pg.execute("DELETE FROM challenger WHERE id = 1")
    await clear_state(pg)


async def mark_warmed(pg: asyncpg.Connection, version: int) -> None:
    await pg.execute(
        "UPDATE challenger SET warmed_at = now() WHERE id = 1 AND version = $1", version
    )


async def forget_leads(pg: asyncpg.Connection, lead_ids: Sequence[str]) -> None:
    """Drop the challenger's copies of leads merged into others."""
    await pg.execute(f"DELETE FROM {LEADS} WHERE lead_id = ANY($1::text[])", list(lead_ids))


async def save_transitions(
    pg: asyncpg.Connection, version: int, transitions: Sequence[TransitionDoc]
) -> None:
    """The challenger's lead stage changes, for the outcome review (never published)."""
    t = transitions
    await pg.execute(
        """
        INSERT INTO challenger_transitions (transition_id, lead_id, from_stage, to_stage,
            reason, rule_id, ruleset_version, score_total, occurred_at, record)
        SELECT $9::int || ':' || i, l, f, s, r, ru, $9::int, sc, o, rec::jsonb
        FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[],
                    $6::text[], $7::float8[], $8::timestamptz[], $10::text[])
             AS u(i, l, f, s, r, ru, sc, o, rec)
        ON CONFLICT DO NOTHING
        """,
        [x["transition_id"] for x in t],
        [x["lead_id"] for x in t],
        [x["from_stage"] for x in t],
        [x["to_stage"] for x in t],
        [x["reason"] for x in t],
        [x["rule_id"] for x in t],
        [x["score"]["total"] for x in t],
        [datetime.fromisoformat(x["occurred_at"]) for x in t],
        version,
        # What the review per score reads, in the live records' shape.
        [
            orjson.dumps({"qualified_by": x["qualified_by"], "scores": x["scores"]}).decode()
            for x in t
        ],
    )


async def save_account_transitions(
    pg: asyncpg.Connection, version: int, transitions: Sequence[AccountTransitionDoc]
) -> None:
    a = transitions
    await pg.execute(
        """
        INSERT INTO challenger_account_transitions (transition_id, account_id, from_stage,
            to_stage, reason, ruleset_version, score_total, occurred_at)
        SELECT $7::int || ':' || i, ac, f, s, r, $7::int, sc, o
        FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[],
                    $6::float8[], $8::timestamptz[]) AS u(i, ac, f, s, r, sc, o)
        ON CONFLICT DO NOTHING
        """,
        [x["transition_id"] for x in a],
        [x["account_id"] for x in a],
        [x["from_stage"] for x in a],
        [x["to_stage"] for x in a],
        [x["reason"] for x in a],
        [x["score"]["total"] for x in a],
        version,
        [datetime.fromisoformat(x["occurred_at"]) for x in a],
    )


async def leads_at_another_stage(pg: asyncpg.Connection, stages: Sequence[str]) -> list[str]:
    """Leads in one of `stages` live whose challenger stage differs, in id order."""
    rows = await pg.fetch(
        f"SELECT l.lead_id FROM leads l JOIN {LEADS} c USING (lead_id) "
        "WHERE l.stage <> c.stage AND l.stage = ANY($1::text[]) ORDER BY l.lead_id",
        list(stages),
    )
    return [r["lead_id"] for r in rows]


async def take_over_scores(pg: asyncpg.Connection, version: int) -> int:
    """Every live lead and account takes the challenger's scores, and the history its hits;
    returns how many leads did. Stages are left to the caller."""
    taken = await pg.execute(
        f"UPDATE leads l SET fit = c.fit, engagement = c.engagement, as_of = c.as_of, "
        f"scoring = c.scoring, journey_phase = c.journey_phase, "
        f"ruleset_version = c.ruleset_version, updated_at = now(), "
        # Every write of a lead row raises its version (migration 0015: cached copies).
        f"row_version = l.row_version + 1 "
        f"FROM {LEADS} c WHERE c.lead_id = l.lead_id"
    )
    await pg.execute(
        f"UPDATE accounts a SET fit = c.fit, engagement = c.engagement, coverage = c.coverage, "
        f"score = c.score, roles_covered = c.roles_covered, member_count = c.member_count, "
        f"as_of = c.as_of, scoring = c.scoring, journey_phase = c.journey_phase, "
        f"ruleset_version = c.ruleset_version, "
        f"updated_at = now() FROM {ACCOUNTS} c WHERE c.account_id = a.account_id"
    )
    # The history explains the new scores: each event's hits become the challenger's.
    await pg.execute(
        "UPDATE lead_events SET hits = challenger_hits, ruleset_version = $1, "
        "points = (SELECT coalesce(sum((h ->> 1)::float8), 0) "
        "          FROM json_array_elements(challenger_hits) AS h), "
        "challenger_hits = NULL WHERE challenger_hits IS NOT NULL",
        version,
    )
    return int(taken.split()[-1])
