"""The personal data page (admins): requests to export, erase or unsuppress a person, and
forms to erase or unsuppress one. The page lists requests without the person's ids."""
# No "from __future__ import annotations": FastAPI must see the parameter types.

from typing import Any

from fastapi import APIRouter, Request, Response
from pydantic import ValidationError

from schemas import api
from services.app import people
from services.app.errors import ApiError
from services.console.pages import PagesDep

router = APIRouter()

ID_KINDS = {
    "email": "E-mail address",
    "user_id": "User id",
    "anonymous_id": "Anonymous id",
    "lead_id": "Lead id",
}


@router.get("/people")
async def people_page(request: Request, ui: PagesDep) -> Response:
    user = await ui.admin_of(request)
    listing = await people.person_requests(ui.container, limit=200)
    return ui.page(
        request,
        "people.html",
        user,
        requests=[r.model_dump(mode="json") for r in listing.requests],
        id_kinds=ID_KINDS,
    )


def _named(form: Any, model: type[api.PersonNamed], **extra: Any) -> api.PersonNamed:
    kind, value = form.get("kind"), form.get("value")
    if kind not in ID_KINDS or not isinstance(value, str):
        raise ApiError(422, "invalid_identifier", "choose what names the person and type it")
    try:
        return model.model_validate({kind: value, **extra})
    except ValidationError as exc:
        raise ApiError(
            422, "invalid_identifier", f"{ID_KINDS[kind]}: {exc.errors()[0]['msg']}"
        ) from None


@router.post("/people/erase")
async def erase(request: Request, ui: PagesDep) -> Response:
    user, form = await ui.posted(request, admin=True)
    body = _named(form, api.ErasureRequest, suppress=form.get("suppress") == "on")
    assert isinstance(body, api.ErasureRequest)
    erasure, new = await people.request_erasure(ui.container, body, by=user.name)
    notice = (
        f"Erasure {erasure.id} queued; its status shows below."
        if new
        else f"Already erased and suppressed by request {erasure.id}."
    )
    return ui.to("/people", notice=notice)


@router.post("/people/unsuppress")
async def unsuppress(request: Request, ui: PagesDep) -> Response:
    user, form = await ui.posted(request, admin=True)
    done = await people.unsuppress(ui.container, _named(form, api.PersonNamed), by=user.name)
    return ui.to("/people", notice=f"Unsuppressed by request {done.id}: their events count again.")
