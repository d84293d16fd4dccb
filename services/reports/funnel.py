"""The funnel report: leads and accounts entering each stage in a window, how long they
stayed, how many went on to the next, how sales followed up the handoffs, and entries by the
score and the grade that qualified them. The rows come from services/adapters/postgres/
read_store.py; every query starts from an index (transitions by time, transitions by lead
and time, handoffs by entry time, feedback by time).
"""

from __future__ import annotations

from datetime import datetime
from itertools import pairwise
from typing import Any

from services.adapters.postgres import read_store
from services.adapters.postgres.db import Connection
from stage_router.accounts import ACCOUNT_FUNNEL
from stage_router.lifecycle import FUNNEL

NEXT = dict(pairwise(FUNNEL))
ACCOUNT_NEXT = dict(pairwise(ACCOUNT_FUNNEL))


def _seconds(value: Any) -> float | None:
    return round(float(value), 3) if value is not None else None


async def _stages_and_conversion(
    pg: Connection,
    since: datetime,
    until: datetime,
    *,
    accounts: bool,
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Entries, time in stage and conversion to the next stage, of leads or accounts."""
    funnel, following = (ACCOUNT_FUNNEL, ACCOUNT_NEXT) if accounts else (FUNNEL, NEXT)
    stage_rows = {
        r["to_stage"]: r for r in await read_store.stage_rows(pg, since, until, accounts=accounts)
    }
    conversion_rows = {
        r["from_stage"]: r
        for r in await read_store.conversion_rows(pg, since, until, following, accounts=accounts)
    }
    stages = {}
    for stage in (
        *funnel,
        *(("target", "disqualified") if accounts else ("recycled", "disqualified")),
    ):
        row = stage_rows.get(stage)
        stages[stage] = {
            "entered": row["entered"] if row else 0,
            "median_seconds_in_stage": _seconds(row["median_seconds"]) if row else None,
            "p90_seconds_in_stage": _seconds(row["p90_seconds"]) if row else None,
        }
    conversion = []
    for stage, next_stage in following.items():
        row = conversion_rows.get(stage)
        entered, converted = (row["entered"], row["converted"]) if row else (0, 0)
        conversion.append(
            {
                "from": stage,
                "to": next_stage,
                "entered": entered,
                "converted": converted,
                "rate": round(converted / entered, 4) if entered else None,
            }
        )
    return stages, conversion


async def funnel_by_score(
    pg: Connection, since: datetime, until: datetime
) -> dict[str, dict[str, dict[str, int]]]:
    """Per qualifying stage: entries by score, and entries by label."""
    by_score: dict[str, dict[str, int]] = {}
    for r in await read_store.entries_by_score(pg, since, until):
        by_score.setdefault(r["to_stage"], {})[r["score"]] = r["entries"]
    by_label: dict[str, dict[str, int]] = {}
    for r in await read_store.entries_by_label(pg, since, until):
        by_label.setdefault(r["to_stage"], {})[r["label"]] = r["entries"]
    return {"by_score": by_score, "by_label": by_label}


async def funnel_report(pg: Connection, since: datetime, until: datetime) -> dict[str, Any]:
    stages, conversion = await _stages_and_conversion(pg, since, until, accounts=False)
    account_stages, account_conversion = await _stages_and_conversion(
        pg, since, until, accounts=True
    )
    sla = await read_store.follow_up_row(pg, since, until)
    rejections = await read_store.rejection_rows(pg, since, until)
    due = sla["in_time"] + sla["late"] + sla["unanswered"]
    return {
        "since": since,
        "until": until,
        "stages": stages,
        "conversion": conversion,
        "sla": {
            "handoffs": sla["handoffs"],
            "answered_in_time": sla["in_time"],
            "answered_late": sla["late"],
            "breached_unanswered": sla["unanswered"],
            "open": sla["open"],
            "superseded": sla["superseded"],
            "compliance": round(sla["in_time"] / due, 4) if due else None,
            "median_follow_up_seconds": _seconds(sla["median_follow_up_seconds"]),
        },
        "rejections": [{"reason": r["reason"], "count": r["count"]} for r in rejections],
        "accounts": {"stages": account_stages, "conversion": account_conversion},
        **await funnel_by_score(pg, since, until),
    }
