"""The buyer journey: a lead's or an account's place in it, and the journey report.
Shared by the HTTP API, the console and the command line."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from schemas import api
from schemas.timefmt import iso
from scoring_service.state import JourneyState
from services.adapters.postgres import rule_set_store
from services.adapters.postgres.db import connection
from services.app.container import Container
from services.app.paging import time_window
from services.reports import journey_report


def journey_position(journey: JourneyState | None) -> dict[str, Any] | None:
    """A lead's or an account's place in the buyer journey, as the API shows it."""
    if journey is None:
        return None

    def touch(value: list[Any] | None) -> dict[str, Any] | None:
        return {"channel": value[0], "at": iso(value[1])} if value else None

    return {
        "phase": journey.phase,
        "since": iso(journey.since) if journey.since is not None else None,
        "last_evidence_at": iso(journey.evidence_at) if journey.evidence_at is not None else None,
        "first_touch": touch(journey.first_touch),
        "last_touch": touch(journey.last_touch),
        "entered_via": journey.entered_via,
        "seen": journey.seen,
    }


async def journey_figures(
    container: Container, since: datetime | None, until: datetime | None
) -> api.JourneyReport:
    """Leads and accounts per phase now; moves, time in phase, channel mix, conversion and
    next steps for moves in [since, until) (by default the last 30 days)."""
    since, until = time_window(since, until, default_days=30)
    async with connection(container.db) as pg:
        version = await rule_set_store.active_version(pg)
        engine = await container.rules.engine_for(pg, version) if version else None
        journey = engine.journey if engine is not None else None
        return api.JourneyReport.model_validate(
            await journey_report.report(pg, since, until, journey)
        )
