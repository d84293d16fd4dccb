"""Leads: the work queue (by score) and a lead's page (its score explained, its timeline)."""
# No "from __future__ import annotations": FastAPI must see the parameter types.

import logging
from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request, Response

from schemas.rule_set import PHASE_FILTER, Stage
from services.app.leads import (
    lead_detail,
    lead_history,
    lead_page,
    open_handoff,
)
from services.console import charts
from services.console.pages import PAGE_SIZE, IdInPath, PagesDep

log = logging.getLogger(__name__)

TIMELINE_EVENTS = 200

router = APIRouter()


@router.get("/leads")
async def leads(
    request: Request,
    ui: PagesDep,
    stage: Annotated[Stage | None, Query()] = None,
    sort: Annotated[str, Query(pattern=r"^(id|label|-score(:[a-z][a-z0-9_]{0,39})?)$")] = "-score",
    label: Annotated[str | None, Query(pattern=r"^([A-D][1-3])?$")] = None,
    phase: Annotated[str | None, Query(pattern=PHASE_FILTER)] = None,
    cursor: Annotated[str | None, Query(max_length=400)] = None,
) -> Response:
    user = await ui.user_of(request)
    page = await lead_page(
        ui.container,
        stage=stage,
        min_score=None,
        cursor=cursor,
        limit=PAGE_SIZE,
        sort=sort,
        label=label,
        phase=phase,
    )
    listing = page.model_dump(mode="json", by_alias=True)  # the page reads what the API gives
    # The scores the leads on the page have, to sort by any of them.
    names = sorted({name for item in listing["items"] for name in item["scores"]} - {"default"})
    return ui.page(
        request,
        "leads.html",
        user,
        listing=listing,
        stage=stage,
        sort=sort,
        label=label,
        phase=phase or None,
        score_names=names,
        labels=[f"{g}{n}" for g in "ABCD" for n in "123"],
    )


@router.get("/leads/{lead_id:path}")
async def lead(request: Request, ui: PagesDep, lead_id: IdInPath) -> Response:
    user = await ui.user_of(request)
    # The page reads what the API gives, as dictionaries.
    detail = (await lead_detail(ui.container, lead_id)).model_dump(mode="json", by_alias=True)
    history = (await lead_history(ui.container, detail["lead_id"], TIMELINE_EVENTS)).model_dump(
        mode="json", by_alias=True
    )
    handoff = await open_handoff(ui.container, detail["lead_id"])
    signals = detail["signals"]
    chart = charts.bar_chart(
        "contributions",
        f"What makes up the score of {detail['lead_id']}",
        [(s["rule_id"], s["contribution"]) for s in signals],
        unit=" pts",
    )
    scores = detail["scores"]
    scores_chart = (
        charts.bar_chart(
            "scores",
            f"The scores of {detail['lead_id']}",
            [(name, entry["total"]) for name, entry in scores.items()],
            unit=" pts",
        )
        if len(scores) > 1
        else None
    )
    return ui.page(
        request,
        "lead.html",
        user,
        lead=detail,
        chart=chart,
        scores_chart=scores_chart,
        handoff=handoff,
        timeline=_timeline(history),
        at_last_event=history["score"],
        last_event_at=history["score_as_of"],
        signal_sum=round(sum(s["contribution"] for s in signals), 2),
    )


def _moment(iso: str) -> datetime:
    return datetime.fromisoformat(iso.replace("Z", "+00:00"))


def _timeline(history: dict[str, Any]) -> list[dict[str, Any]]:
    """Events and transitions in one list, oldest first."""
    items: list[dict[str, Any]] = [
        {
            "kind": "event",
            "at": _moment(event["occurred_at"]),
            "title": event["type"],
            "then": event["contribution"],
            "points": event["contribution_now"],
            "hits": [h for h in event["hits"] if h["counted"]],
            "superseded": event["superseded"],
        }
        for event in history["events"]
    ]
    for transition in history["transitions"]:
        items.append(
            {
                "kind": "transition",
                "at": _moment(transition["occurred_at"]),
                "title": f"{transition['from_stage']} → {transition['to_stage']}",
                "reason": transition.get("reason"),
                "detail": transition.get("reason_detail") or transition.get("rule_id"),
                # Several scores: which made the move ("default" alone says nothing new).
                "by": ", ".join(
                    name for name in transition.get("qualified_by") or () if name != "default"
                ),
            }
        )
    for adjustment in history.get("adjustments", []):
        items.append(
            {
                "kind": "adjustment",
                "at": _moment(adjustment["at"]),
                "title": f"engagement {adjustment['operation']} {adjustment['value']:g}",
                "reason": ", ".join(adjustment["scores"]),
                "detail": adjustment["reason"],
            }
        )
    items.sort(key=lambda item: (item["at"], item["kind"] != "event"))
    return items
