"""The pipeline: the funnel, follow-up deadlines, rejections and the outcome review in a window."""
# No "from __future__ import annotations": FastAPI must see the parameter types.

import logging
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request, Response

from services.app.leads import funnel_figures, pipeline_reviews
from services.console import charts, formats
from services.console.pages import PagesDep

log = logging.getLogger(__name__)

WINDOWS = {"7": 7, "30": 30, "90": 90, "365": 365}

router = APIRouter()


def report_window(days: str) -> tuple[datetime, datetime]:
    """The last `days` (one of WINDOWS) up to now, as a report's [since, until)."""
    until = datetime.now(UTC)
    return until - timedelta(days=WINDOWS[days]), until


@router.get("/pipeline")
async def pipeline(
    request: Request,
    ui: PagesDep,
    days: Annotated[str, Query(pattern="^(7|30|90|365)$")] = "30",
) -> Response:
    user = await ui.user_of(request)
    since, until = report_window(days)
    report = (await funnel_figures(ui.container, since, until)).model_dump(
        mode="json", by_alias=True
    )
    review, challenger_review = await pipeline_reviews(ui.container, since, until)
    return ui.page(
        request,
        "pipeline.html",
        user,
        report=report,
        days=days,
        windows=list(WINDOWS),
        review=review,
        challenger_review=challenger_review,
        **_funnel_charts(report),
    )


def _funnel_charts(report: dict[str, Any]) -> dict[str, Any]:
    stages = report["stages"]
    sla = report["sla"]
    return {
        "entered_chart": charts.bar_chart(
            "entered", "Leads entering each stage", [(s, stages[s]["entered"]) for s in stages]
        ),
        "conversion_chart": charts.bar_chart(
            "conversion",
            "Conversion to the next stage",
            [
                (f"{c['from']} → {c['to']}", round((c["rate"] or 0) * 100, 1))
                for c in report["conversion"]
            ],
            unit="%",
        ),
        "time_chart": charts.bar_chart(
            "time-in-stage",
            "Median time in each stage",
            [
                (s, stages[s]["median_seconds_in_stage"])
                for s in stages
                if stages[s]["median_seconds_in_stage"] is not None
            ],
            shown=formats.duration,  # as the table says it
        ),
        "sla_chart": charts.bar_chart(
            "sla",
            "Follow-ups after handoff",
            [
                ("answered in time", sla["answered_in_time"]),
                ("answered late", sla["answered_late"]),
                ("breached, unanswered", sla["breached_unanswered"]),
                ("still open", sla["open"]),
                # Moved on (a later stage's deadline replaced it) before anyone answered.
                ("superseded, unanswered", sla["superseded"]),
            ],
        ),
        "rejection_chart": charts.bar_chart(
            "rejections",
            "Rejections by reason",
            [(r["reason"] or "no reason given", r["count"]) for r in report["rejections"]],
        ),
    }
