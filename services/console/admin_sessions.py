"""Console sessions (admins): who is signed in, ending one session or all of a token's."""
# No "from __future__ import annotations": FastAPI must see the parameter types.

import logging
from typing import Annotated

from fastapi import APIRouter, Path, Request, Response

from services.app.errors import ApiError
from services.console.pages import PagesDep
from services.console.session import visitor_of

log = logging.getLogger(__name__)

_SESSION_ID = Path(pattern=r"^[0-9a-f]{64}$")

router = APIRouter()


@router.get("/sessions")
async def sessions_page(request: Request, ui: PagesDep) -> Response:
    user = await ui.admin_of(request)
    mine = (await visitor_of(request, ui.sessions)).session
    return ui.page(
        request,
        "sessions.html",
        user,
        sessions=await ui.sessions.listing(),
        mine=mine.id if mine else None,
        idle_minutes=ui.settings.console_idle_minutes,
        lifetime_hours=ui.settings.console_session_hours,
    )


@router.post("/sessions/{session_id}/end")
async def end_session(
    request: Request, ui: PagesDep, session_id: Annotated[str, _SESSION_ID]
) -> Response:
    user, _ = await ui.posted(request, admin=True)
    ended = await ui.sessions.end(session_id, by=user.name)
    return ui.to("/sessions", notice="Session ended." if ended else "That session had ended.")


@router.post("/sessions/end-token")
async def end_token_sessions(request: Request, ui: PagesDep) -> Response:
    user, form = await ui.posted(request, admin=True)
    name = form.get("token_name")
    if not isinstance(name, str) or not 0 < len(name) <= 200:
        raise ApiError(422, "invalid_request", "Name the token whose sessions to end.")
    ended = await ui.sessions.end_all(token_name=name, by=user.name)
    return ui.to("/sessions", notice=f"Ended {ended} session(s) of token {name}.")
