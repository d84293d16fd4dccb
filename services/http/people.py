"""A person's data on request (admins): export, erase, unsuppress, and the requests made."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Query, Response

from schemas import api
from services.app import people
from services.http.common import ERRORS, NOT_FOUND
from services.http.deps import Admin, ContainerDep

router = APIRouter(prefix="/v1/people", tags=["people"], responses=ERRORS)

# An id or an address, at most as long as an id may be (schemas/events.py).
Identifier = Annotated[str | None, Query(min_length=1, max_length=512)]


@router.get("/export", response_model=api.PersonExport, responses=NOT_FOUND)
async def export(
    container: ContainerDep,
    admin: Admin,
    lead_id: Identifier = None,
    user_id: Identifier = None,
    anonymous_id: Identifier = None,
    email: Identifier = None,
) -> api.PersonExport:
    """Everything the service holds on one person, named by exactly one of `lead_id`,
    `user_id`, `anonymous_id` (followed to the lead it was merged into) or `email` (every
    lead with that address, in any case): their traits, scores as of now with the signals
    behind them, every event, transition, adjustment and journey move, each handoff to
    sales and sales' feedback. Recorded as a request and audited without the person's
    data; 404 when nobody is known by it, 422 for none or several ids, or a pattern."""
    named = api.PersonNamed.model_construct(
        lead_id=lead_id, user_id=user_id, anonymous_id=anonymous_id, email=email
    )
    return await people.export_person(container, named, by=admin.name)


@router.post(
    "/erasures",
    status_code=202,
    response_model=api.PersonRequest,
    responses={**NOT_FOUND, 200: {"model": api.PersonRequest}},
)
async def erase(
    container: ContainerDep, admin: Admin, body: api.ErasureRequest, response: Response
) -> api.PersonRequest:
    """Erase a person, named by exactly one id or their e-mail address: every row of every
    lead they are known as, in every table, in one transaction; their accounts re-scored
    without them; an erasure record on `lead-erasures` and to webhook endpoints that take
    `erasures`. Queued (202) and carried out in the background, oldest first: follow it at
    GET /v1/people/requests/{id}. With `suppress` (the default) their events are dropped
    from now on. A person already erased and suppressed gives that erasure again (200);
    404 when nobody is known by the identifier."""
    request, new = await people.request_erasure(container, body, by=admin.name)
    if not new:
        response.status_code = 200
    return request


@router.post("/unsuppress", response_model=api.PersonRequest, responses=NOT_FOUND)
async def unsuppress(
    container: ContainerDep, admin: Admin, body: api.PersonNamed
) -> api.PersonRequest:
    """Let an erased person's events in again (they signed up anew): the ids and address
    their erasure suppressed leave the suppression list together. 404 when the identifier
    is not suppressed."""
    return await people.unsuppress(container, body, by=admin.name)


@router.get("/requests", response_model=api.PersonRequestList)
async def requests(
    container: ContainerDep,
    _: Admin,
    status: Literal["received", "done", "failed"] | None = None,
    limit: Annotated[int, Query(ge=1, le=people.MAX_LISTED)] = 100,
) -> api.PersonRequestList:
    """Requests about people's data, newest first: erasures, exports, unsuppresses, each
    with its status and the rows removed per table, never the person's ids."""
    return await people.person_requests(container, limit=limit, status=status)


@router.get("/requests/{request_id}", response_model=api.PersonRequest, responses=NOT_FOUND)
async def request(container: ContainerDep, _: Admin, request_id: str) -> api.PersonRequest:
    """One request: an erasure's status (received, done, failed) and what it removed."""
    return await people.person_request(container, request_id)
