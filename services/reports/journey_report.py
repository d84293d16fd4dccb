"""The journey report (docs/concepts/journey.md): leads and accounts per phase now, and for the
moves in a window: moves between phases, time in each phase, the channels that brought
leads into it, conversion from it to MQL, SQL and won, and the next-step list.

Read-only, like every report; the rows come from services/adapters/postgres/journey_store.py.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from scoring_service.journey import JourneyBook
from services.adapters.postgres import journey_store
from services.adapters.postgres.db import Connection

# The next-step list keeps, per phase, this many items.
NEXT_STEPS = 10


def _rate(part: int, whole: int) -> float | None:
    return round(part / whole, 4) if whole else None


async def report(
    pg: Connection, since: datetime, until: datetime, book: JourneyBook | None
) -> dict[str, Any]:
    read = await journey_store.journey_rows(pg, since, until, next_steps=NEXT_STEPS)
    now = {(r["subject"], r["phase"]): r["n"] for r in read.now}
    moves = read.moves
    times = {(r["subject"], r["to_phase"]): r for r in read.times}
    channels: dict[str, dict[str, int]] = {}
    for r in read.channels:
        channels.setdefault(r["to_phase"], {})[r["channel"]] = r["n"]
    conversion = {r["to_phase"]: r for r in read.conversion}
    totals = {(r["side"], r["phase"]): int(r["n"]) for r in read.totals}
    steps: dict[str, list[dict[str, Any]]] = {}
    for r in read.next_steps:
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
