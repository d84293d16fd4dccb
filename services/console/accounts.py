"""Accounts: the list (by score, by a committee role missing) and an account's page."""
# No "from __future__ import annotations": FastAPI must see the parameter types.

import logging
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request, Response

from services.app.accounts import account_detail, account_list
from services.console import charts
from services.console.pages import PAGE_SIZE, IdInPath, PagesDep

log = logging.getLogger(__name__)


router = APIRouter()


@router.get("/accounts")
async def accounts(
    request: Request,
    ui: PagesDep,
    stage: Annotated[
        str | None, Query(pattern="^(target|engaged|mqa|opportunity|customer|disqualified)$")
    ] = None,
    role_missing: Annotated[str | None, Query(max_length=40)] = None,
    sort: Annotated[str, Query(pattern="^(-score|id)$")] = "-score",
    cursor: Annotated[str | None, Query(max_length=400)] = None,
) -> Response:
    user = await ui.user_of(request)
    listing = await account_list(
        ui.container,
        stage=stage,
        min_score=None,
        role_missing=role_missing or None,
        cursor=cursor,
        limit=PAGE_SIZE,
        sort=sort,
    )
    return ui.page(
        request,
        "accounts.html",
        user,
        listing=listing.model_dump(mode="json", by_alias=True),
        stage=stage,
        sort=sort,
        role_missing=role_missing,
    )


@router.get("/accounts/{account_id:path}")
async def account(request: Request, ui: PagesDep, account_id: IdInPath) -> Response:
    user = await ui.user_of(request)
    # The page reads what the API gives, as dictionaries.
    detail = (await account_detail(ui.container, account_id)).model_dump(mode="json", by_alias=True)
    members_chart = charts.bar_chart(
        "members",
        f"How much each member adds to {detail['account_id']}",
        [(m["lead_id"], m["counted"]) for m in detail["members"][:20]],
        unit=" pts",
    )
    # Per learned score, the member it rates likeliest to convert (members without it, as
    # under a version that had none, are left out).
    likeliest: dict[str, dict[str, Any]] = {}
    for member in detail["members"]:
        for name, points in member["learned"].items():
            if name not in likeliest or points > likeliest[name]["learned"][name]:
                likeliest[name] = member
    return ui.page(
        request,
        "account.html",
        user,
        account=detail,
        members_chart=members_chart,
        likeliest=dict(sorted(likeliest.items())),
    )
