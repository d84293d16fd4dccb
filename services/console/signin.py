"""Signing in to the console with an API token, and out."""
# No "from __future__ import annotations": FastAPI must see the parameter types.

import logging

from fastapi import APIRouter, Request, Response
from fastapi.responses import RedirectResponse

from services.app.sessions import SignInRefused
from services.console.pages import PagesDep
from services.console.session import (
    SESSION_COOKIE,
    anonymous,
    check_csrf,
    client_of,
    sign_in_refusal,
    visitor_of,
)

log = logging.getLogger(__name__)

router = APIRouter()


@router.get("/", include_in_schema=False)
async def home(request: Request, ui: PagesDep) -> Response:
    await ui.user_of(request)
    return ui.to("/leads")


@router.get("/signin")
async def signin_form(request: Request, ui: PagesDep, next: str = "") -> Response:
    return ui.page(request, "signin.html", None, next=_local_path(next, ui.prefix))


@router.post("/signin")
async def signin(request: Request, ui: PagesDep) -> Response:
    form = await request.form(max_files=0, max_fields=5)
    offered, token, after = form.get("csrf"), form.get("token"), form.get("next")
    visitor = anonymous(request, ui.sessions)
    check_csrf(visitor, offered if isinstance(offered, str) else None)
    target = _local_path(after if isinstance(after, str) else "", ui.prefix) or f"{ui.prefix}/leads"
    if visitor.open_console:  # nothing to sign in to
        return RedirectResponse(target, 303)
    if not isinstance(token, str) or not token.strip() or len(token) > 200:
        return ui.page(request, "signin.html", None, 400, problem="Paste your API token.", next="")
    try:
        secret, session = await ui.sessions.sign_in(
            token.strip(),
            client=client_of(request),
            user_agent=request.headers.get("user-agent"),
        )
    except SignInRefused as exc:
        problem = sign_in_refusal(exc.reason)
        return ui.page(request, "signin.html", None, 401, problem=problem, next="")
    log.info("console sign-in by %s (%s)", session.principal.name, session.principal.role)
    response = RedirectResponse(target, 303)
    lifetime = int(ui.settings.console_session_hours * 3600)
    ui.set_cookie(response, SESSION_COOKIE, secret, max_age=lifetime)
    return response


@router.post("/signout")
async def signout(request: Request, ui: PagesDep) -> Response:
    form = await request.form(max_files=0, max_fields=5)
    offered = form.get("csrf")
    visitor = await visitor_of(request, ui.sessions)
    check_csrf(visitor, offered if isinstance(offered, str) else None)
    await ui.sessions.sign_out(request.cookies.get(SESSION_COOKIE, ""))
    response = ui.to("/signin")
    response.delete_cookie(SESSION_COOKIE, path=ui.prefix)
    return response


def _local_path(target: str, prefix: str) -> str:
    """Only a page of this console may follow sign-in (no open redirect)."""
    if target.startswith(f"{prefix}/") and "//" not in target and "\\" not in target:
        return target
    return ""
