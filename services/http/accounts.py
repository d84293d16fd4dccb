"""Accounts: lists, an account's score and buying committee explained, its history, sales'
word on an account. Each route parses the request and calls a use case (services/app)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query

from schemas import api
from schemas.records import AccountStage
from schemas.rule_set import PHASE_FILTER
from services.app import accounts
from services.http.common import ERRORS, NOT_FOUND, SubjectId
from services.http.deps import Admin, ContainerDep, Viewer

router = APIRouter(prefix="/v1", tags=["accounts"], responses=ERRORS)


@router.get("/accounts", response_model=api.AccountPage)
async def list_accounts(
    container: ContainerDep,
    _: Viewer,
    stage: AccountStage | None = None,
    min_score: float | None = None,
    role_missing: Annotated[str | None, Query(max_length=40)] = None,
    cursor: str | None = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    sort: Annotated[str, Query(pattern=r"^(id|-score(:[a-z][a-z0-9_]{0,39})?)$")] = "id",
    phase: Annotated[str | None, Query(pattern=PHASE_FILTER)] = None,
) -> api.AccountPage:
    """Accounts in id order, or by score, highest first (`sort=-score`; `-score:<name>`
    by a named score), filtered by
    stage, minimum score, buyer-journey phase (`phase=evaluation`) and a committee role
    they have not covered (`role_missing=economic_buyer`: the accounts to find a budget
    owner in)."""
    return await accounts.account_list(
        container,
        stage=stage,
        min_score=min_score,
        role_missing=role_missing,
        cursor=cursor,
        limit=limit,
        sort=sort,
        phase=phase,
    )


@router.get("/accounts/{account_id}", response_model=api.AccountPublic, responses=NOT_FOUND)
async def get_account(
    container: ContainerDep, account_id: SubjectId, _: Viewer
) -> api.AccountPublic:
    """An account's score and its parts, its stage, its members with their roles and
    shares, the committee roles covered and missing, and the top signals across members."""
    return await accounts.account_detail(container, account_id)


@router.get(
    "/accounts/{account_id}/history", response_model=api.AccountHistory, responses=NOT_FOUND
)
async def account_history(
    container: ContainerDep, account_id: SubjectId, _: Viewer
) -> api.AccountHistory:
    """The account's stage changes, oldest first, as published."""
    return await accounts.account_history(container, account_id)


@router.post(
    "/accounts/{account_id}/feedback",
    response_model=api.AccountFeedbackResult,
    responses={
        409: {"model": api.ErrorBody, "description": "a move the account table forbids"},
        **NOT_FOUND,
    },
    tags=["sales handoff"],
)
async def account_feedback(
    container: ContainerDep, account_id: SubjectId, body: api.AccountFeedbackBody, who: Admin
) -> api.AccountFeedbackResult:
    """Sales' word on an account (idempotent on feedback_id): an opportunity opened or won
    or lost, the account disqualified or reopened."""

    return await accounts.account_feedback(container, account_id, body, by=who.name)


@router.post(
    "/accounts/{account_id}/adjustments",
    response_model=api.AccountAdjustmentResult,
    responses={
        409: {"model": api.ErrorBody, "description": "no such score, or accounts not scored"},
        **NOT_FOUND,
    },
)
async def adjust(
    container: ContainerDep, account_id: SubjectId, body: api.Adjustment, who: Admin
) -> api.AccountAdjustmentResult:
    """Set or change an account's engagement in one score or all, with the reason:
    added to its members' roll-up (shown among them as `adjust:default`), audited; a
    stage it earns is a transition with reason `adjustment`."""
    return await accounts.adjust(container, account_id, body, by=who.name)
