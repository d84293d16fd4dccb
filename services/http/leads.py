"""Leads: lists, a lead's score explained, its history, sales feedback, the funnel. Each
route parses the request and calls a use case (services/app)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query

from schemas import api
from schemas.records import FeedbackBody
from schemas.rule_set import PHASE_FILTER
from services.app import journey, leads
from services.http.common import ERRORS, NOT_FOUND, IsoDateTime, SubjectId
from services.http.deps import Admin, ContainerDep, Viewer

router = APIRouter(prefix="/v1", tags=["leads"], responses=ERRORS)


@router.get("/leads", response_model=api.LeadPage)
async def list_leads(
    container: ContainerDep,
    _: Viewer,
    stage: str | None = None,
    min_score: float | None = None,
    cursor: str | None = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    sort: Annotated[str, Query(pattern=r"^(id|label|-score(:[a-z][a-z0-9_]{0,39})?)$")] = "id",
    label: Annotated[str | None, Query(pattern=r"^([A-D][1-3])?$")] = None,
    phase: Annotated[str | None, Query(pattern=PHASE_FILTER)] = None,
) -> api.LeadPage:
    """Leads in id order, or by total score, highest first (`sort=-score`, a work queue;
    `sort=-score:fleet` by the named score `fleet`; `sort=label`: A1 first), filtered by
    stage, grade label
    (`label=A1`), buyer-journey phase (`phase=evaluation`) and minimum total in the score
    sorted by. The cursor is the last (score
    and) id seen, so pages stay stable while leads change."""
    return await leads.lead_page(
        container,
        stage=stage,
        min_score=min_score,
        cursor=cursor,
        limit=limit,
        sort=sort,
        label=label,
        phase=phase,
    )


@router.get("/leads/{lead_id}", response_model=api.LeadPublic, responses=NOT_FOUND)
async def get_lead(
    container: ContainerDep,
    lead_id: SubjectId,
    _: Viewer,
    version: Annotated[int | None, Query(ge=1, le=2**31 - 1)] = None,
) -> api.LeadPublic:
    """A lead's stage, its score as of now and the signals that explain it. With
    `version` set to the challenger's, the challenger's own view of the lead."""
    return await leads.lead_detail(container, lead_id, version)


@router.get("/leads/{lead_id}/history", response_model=api.LeadHistory, responses=NOT_FOUND)
async def history(
    container: ContainerDep,
    lead_id: SubjectId,
    _: Viewer,
    limit: Annotated[int, Query(ge=1, le=10_000)] = 1000,
) -> api.LeadHistory:
    """Every scored event (its rule hits, points and what they add to the score now)
    and every transition, oldest first, with the score they explain."""
    return await leads.lead_history(container, lead_id, limit)


@router.post(
    "/leads/{lead_id}/feedback",
    response_model=api.FeedbackResponse,
    responses={
        409: {"model": api.ErrorBody, "description": "a move the table forbids"},
        **NOT_FOUND,
    },
    tags=["sales handoff"],
)
async def feedback(
    container: ContainerDep, lead_id: SubjectId, body: FeedbackBody, who: Admin
) -> api.FeedbackResponse:
    """Record a sales outcome (idempotent on feedback_id): accepted, qualified,
    rejected (with a reason), converted, won, lost or disqualified."""
    return await leads.record_feedback(container, lead_id, body, by=who.name)


@router.post(
    "/leads/{lead_id}/stage",
    response_model=api.StageChangeResult,
    responses={
        409: {"model": api.ErrorBody, "description": "the lead is already in that stage"},
        **NOT_FOUND,
    },
)
async def set_stage(
    container: ContainerDep, lead_id: SubjectId, body: api.StageChange, who: Admin
) -> api.StageChangeResult:
    """Set a lead's stage by hand: a transition with reason `manual` and the reason in
    words, sent like any other (notifications and deadlines included), and audited."""

    return await leads.set_stage(container, lead_id, body.stage, reason=body.reason, by=who.name)


@router.post(
    "/leads/{lead_id}/adjustments",
    response_model=api.AdjustmentResult,
    responses={
        409: {"model": api.ErrorBody, "description": "no such score in the active rule set"},
        **NOT_FOUND,
    },
)
async def adjust(
    container: ContainerDep, lead_id: SubjectId, body: api.Adjustment, who: Admin
) -> api.AdjustmentResult:
    """Set or change a lead's engagement in one score or all (an annual reset, bot
    activity, a lost opportunity), with the reason: audited, shown in the lead's
    explanation and history; a stage it earns is a transition with reason `adjustment`."""
    return await leads.adjust(container, lead_id, body, by=who.name)


@router.get(
    "/review",
    response_model=api.ReviewReport,
    response_model_by_alias=True,
    responses=NOT_FOUND,
    tags=["quarterly review"],
)
async def review(
    container: ContainerDep,
    _: Viewer,
    since: IsoDateTime | None = None,
    until: IsoDateTime | None = None,
    version: Annotated[int | None, Query(ge=1, le=2**31 - 1)] = None,
) -> api.ReviewReport:
    """For leads a version (by default the active one) handed to sales in [since, until)
    (by default the last 90 days): the share sales accepted, qualified, converted, won and
    lost and the median time to each; conversion by score band at handoff; per rule, hits
    among won and lost leads and the lift; precision and recall of the handoff against
    the leads sales qualified in the window; the same for accounts (MQA). For the
    running challenger, the report on its own stages, with the active version's."""
    return await leads.review(container, since, until, version)


@router.get("/funnel", response_model=api.FunnelReport, tags=["sales handoff"])
async def funnel(
    container: ContainerDep,
    _: Viewer,
    since: IsoDateTime | None = None,
    until: IsoDateTime | None = None,
) -> api.FunnelReport:
    """Leads entering each stage, conversion between stages, time in stage, SLA
    compliance and rejections by reason, for transitions in [since, until)."""
    return await leads.funnel_figures(container, since, until)


@router.get("/journey", response_model=api.JourneyReport, tags=["buyer journey"])
async def journey_report(
    container: ContainerDep,
    _: Viewer,
    since: IsoDateTime | None = None,
    until: IsoDateTime | None = None,
) -> api.JourneyReport:
    """Leads and accounts per buyer-journey phase now; for moves in [since, until) (by
    default the last 30 days): moves between phases, median time in each phase, the
    channels that brought leads in, conversion to MQL, SQL and won, and the next-step
    list (what leads saw before moving on, against those who stalled)."""
    return await journey.journey_figures(container, since, until)
