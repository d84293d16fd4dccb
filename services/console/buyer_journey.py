"""The buyer journey: leads and accounts per phase, time in phase, channels, conversion and
the next-step list, for moves in a window."""
# No "from __future__ import annotations": FastAPI must see the parameter types.

from typing import Annotated, Any

from fastapi import APIRouter, Query, Request, Response

from services.app.journey import journey_figures
from services.console import charts, formats
from services.console.pages import PagesDep
from services.console.pipeline import WINDOWS, report_window

router = APIRouter()


@router.get("/journey")
async def journey(
    request: Request,
    ui: PagesDep,
    days: Annotated[str, Query(pattern="^(7|30|90|365)$")] = "30",
) -> Response:
    user = await ui.user_of(request)
    since, until = report_window(days)
    report = (await journey_figures(ui.container, since, until)).model_dump(
        mode="json", by_alias=True
    )
    return ui.page(
        request,
        "journey.html",
        user,
        report=report,
        days=days,
        windows=list(WINDOWS),
        **_journey_charts(report),
    )


def _journey_charts(report: dict[str, Any]) -> dict[str, Any]:
    phases = report["phases"]
    return {
        "now_chart": charts.bar_chart(
            "leads-now", "Leads in each phase now", [(p["name"], p["leads_now"]) for p in phases]
        ),
        "time_chart": charts.bar_chart(
            "time-in-phase",
            "Median time in each phase",
            [
                (p["name"], p["median_seconds_in_phase"])
                for p in phases
                if p["median_seconds_in_phase"] is not None
            ],
            shown=formats.duration,  # as the table says it
        ),
    }
