"""The dead letters page: what the service could not use, why, and sending one again."""
# No "from __future__ import annotations": FastAPI must see the parameter types.

from datetime import UTC, datetime
from typing import Annotated

from fastapi import APIRouter, Path, Query, Request, Response

from services.app import dead_letters
from services.app.errors import ApiError
from services.console.pages import PagesDep

router = APIRouter()

_AT = Path(pattern=r"^[0-9]{1,10}:[0-9]{1,19}$")


@router.get("/dead-letters")
async def dead_letters_page(
    request: Request,
    ui: PagesDep,
    reason: Annotated[str | None, Query(max_length=40)] = None,
    since: Annotated[str | None, Query(max_length=40)] = None,
) -> Response:
    user = await ui.user_of(request)
    start = None
    if since:
        try:
            day = datetime.fromisoformat(since)
            # A date or time without an offset is UTC, as everywhere in the console.
            start = (day if day.tzinfo else day.replace(tzinfo=UTC)).timestamp()
        except (ValueError, OverflowError):
            raise ApiError(422, "invalid_request", f"{since!r} is not a date") from None
    letters = await dead_letters.listing(ui.container, reason=reason or None, since=start)
    return ui.page(
        request,
        "dead_letters.html",
        user,
        letters=letters,
        reason=reason or "",
        since=since or "",
        topic=ui.settings.topic_dlq,
    )


@router.get("/dead-letters/{at}")
async def dead_letter_page(request: Request, ui: PagesDep, at: Annotated[str, _AT]) -> Response:
    user = await ui.user_of(request)
    letter = await dead_letters.one(ui.container, at)
    return ui.page(request, "dead_letter.html", user, letter=letter)


@router.post("/dead-letters/{at}/resend")
async def resend(request: Request, ui: PagesDep, at: Annotated[str, _AT]) -> Response:
    _, form = await ui.posted(request, admin=True)
    fixed = form.get("event")
    text = fixed.encode() if isinstance(fixed, str) and fixed.strip() else None
    await dead_letters.resend(ui.container, at, text)
    return ui.to(f"/dead-letters/{at}", notice=f"Sent {at} to lead-events again.")
