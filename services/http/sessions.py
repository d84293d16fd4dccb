"""Console sessions for admins: who is signed in, and ending one or all of a token's."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Path, Query

from schemas import api
from services.app.errors import ApiError
from services.http.common import ERRORS, NOT_FOUND
from services.http.deps import Admin, ContainerDep

_SESSION_ID = Path(pattern=r"^[0-9a-f]{64}$", description="a session id as listed")

router = APIRouter(prefix="/v1/sessions", tags=["sessions"], responses=ERRORS)


@router.get("", response_model=api.ConsoleSessionList)
async def list_sessions(container: ContainerDep, _: Admin) -> api.ConsoleSessionList:
    """Every live console session, newest first."""
    return api.ConsoleSessionList(items=await container.sessions.listing())


@router.delete("/{session_id}", response_model=api.SessionsEnded, responses=NOT_FOUND)
async def end_session(
    container: ContainerDep, session_id: Annotated[str, _SESSION_ID], admin: Admin
) -> dict[str, Any]:
    """End one session now (its next request needs a new sign-in); audited."""
    if not await container.sessions.end(session_id, by=admin.name):
        raise ApiError(404, "session_not_found", "there is no such session")
    return {"ended": 1}


@router.delete("", response_model=api.SessionsEnded)
async def end_sessions(
    container: ContainerDep,
    admin: Admin,
    token: Annotated[
        str | None, Query(min_length=1, max_length=200, description="a token's name")
    ] = None,
    all: Annotated[bool, Query(description="every session of every token")] = False,
) -> dict[str, Any]:
    """End every session of one token (`token=NAME`), or every session (`all=true`, for an
    incident); audited."""
    if (token is None) == (not all):
        raise ApiError(422, "invalid_request", "give either token=NAME or all=true")
    return {"ended": await container.sessions.end_all(token_name=token, by=admin.name)}
