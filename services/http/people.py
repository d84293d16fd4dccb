"""A person's data on request: the export of everything held on one person (admins)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query

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
    sales and sales' feedback. Audited without the person's data; 404 when nobody is
    known by it, 422 for none or several ids, or a pattern."""
    return await people.export_person(
        container,
        by=admin.name,
        lead_id=lead_id,
        user_id=user_id,
        anonymous_id=anonymous_id,
        email=email,
    )
