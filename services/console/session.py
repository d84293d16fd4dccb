"""Who is using the console: the signed-in session (services/app/sessions.py keeps them), or the
trusted local user when no tokens are configured, and the CSRF token their forms carry.

A signed-in user's CSRF token is their session's. Before sign-in (the sign-in form) and on
the open local console, it is a random value in a cookie of its own that forms must repeat
(double submit): a page of another site can neither read the cookie nor, with
SameSite=Strict, have the browser send it.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass

from starlette.requests import Request

from services.app.sessions import ConsoleSessions, Session, same_secret
from services.auth import Principal, is_loopback

SESSION_COOKIE = "leadscore_console"
CSRF_COOKIE = "leadscore_csrf"


class SignInNeeded(Exception):
    """The page needs a signed-in user; the console answers with the sign-in page."""


class Forbidden(Exception):
    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail


@dataclass(frozen=True, slots=True)
class Visitor:
    """One request's user (None: not signed in), their session, and their CSRF token."""

    user: Principal | None
    session: Session | None
    csrf: str
    # The console is open to this caller without sign-in (no tokens, loopback).
    open_console: bool
    # The CSRF cookie is new: the response must set it.
    new_csrf_cookie: bool


def open_without_sign_in(tokens: dict[str, Principal], client_host: str | None) -> bool:
    """With no tokens configured the API trusts loopback, and so does the console."""
    return not tokens and is_loopback(client_host)


def client_of(request: Request) -> str | None:
    return request.client.host if request.client else None


async def visitor_of(request: Request, sessions: ConsoleSessions) -> Visitor:
    """Who sent `request`: its session looked up once per request."""
    if getattr(request.state, "looked_up", False):
        return anonymous(request, sessions)
    visitor = anonymous(request, sessions)
    if not visitor.open_console:
        session = await sessions.current(request.cookies.get(SESSION_COOKIE, ""))
        if session is not None:
            visitor = Visitor(session.principal, session, session.csrf, False, False)
    request.state.visitor = visitor
    request.state.looked_up = True
    return visitor


def anonymous(request: Request, sessions: ConsoleSessions) -> Visitor:
    """The visitor as far as this request has got: its session if one was looked up, else
    the local user of an open console or nobody, with the CSRF token from its cookie (or a
    new one, which the response then sets)."""
    known = getattr(request.state, "visitor", None)
    if isinstance(known, Visitor):
        return known
    cookie = request.cookies.get(CSRF_COOKIE, "")
    fresh = not (16 <= len(cookie) <= 64)
    csrf = secrets.token_urlsafe(24) if fresh else cookie
    opened = open_without_sign_in(sessions.tokens, client_of(request))
    user = Principal("loopback", "local") if opened else None
    request.state.visitor = Visitor(user, None, csrf, opened, fresh)
    return request.state.visitor  # type: ignore[no-any-return]


def check_csrf(visitor: Visitor, offered: str | None) -> None:
    if visitor.new_csrf_cookie or not same_secret(visitor.csrf, offered):
        raise Forbidden(
            "This form has expired or did not come from this console. Reload the page and "
            "try again."
        )


def sign_in_refusal(reason: str) -> str:
    """The sign-in page's words for a refused token."""
    if reason.startswith("no API tokens"):
        return (
            "This service has no API tokens configured, so it only trusts its own machine. "
            "Open the console from the machine the service runs on, or configure tokens."
        )
    return "That token is not one this service knows. Check it and try again."
