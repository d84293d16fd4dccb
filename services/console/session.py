"""Who is using the console: sign-in with an API token, the session, CSRF tokens.

The session is Starlette's signed cookie (itsdangerous): HttpOnly, SameSite=strict, expiring
after an idle period, and holding only the token's name and role, when it signed in, and the
CSRF token its forms carry. Every request checks the name and role against the configured
tokens, so a token taken out of the configuration ends its sessions at the next restart.
"""

from __future__ import annotations

import hmac
import secrets
import time
from collections.abc import Callable
from typing import Any

from services.auth import AuthError, Principal, authenticate, is_loopback


class SignInNeeded(Exception):
    """The page needs a signed-in user; the console answers with the sign-in page."""


class Forbidden(Exception):
    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail


def csrf_token(session: dict[str, Any]) -> str:
    """The session's CSRF token, made on first use (the sign-in form has one too)."""
    token = session.get("csrf")
    if not isinstance(token, str):
        token = secrets.token_urlsafe(24)
        session["csrf"] = token
    return token


def check_csrf(session: dict[str, Any], offered: str | None) -> None:
    expected = session.get("csrf")
    if not isinstance(expected, str) or not offered or not hmac.compare_digest(expected, offered):
        raise Forbidden(
            "This form has expired or did not come from this console. Reload the page and "
            "try again."
        )


class Sessions:
    """Signs people in and tells who a request comes from."""

    def __init__(
        self,
        tokens: dict[str, Principal],
        lifetime_seconds: float,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.tokens = tokens
        self.known = set(tokens.values())
        self.lifetime = lifetime_seconds
        self.clock = clock

    def open_without_sign_in(self, client_host: str | None) -> bool:
        """With no tokens configured the API trusts loopback, and so does the console."""
        return not self.tokens and is_loopback(client_host)

    def sign_in(self, session: dict[str, Any], token: str, client_host: str | None) -> Principal:
        """Check the token as the API would; a new session (new CSRF token) on success."""
        try:
            principal = authenticate(self.tokens, f"Bearer {token}", client_host)
        except AuthError as exc:
            raise Forbidden(_sign_in_refusal(exc)) from exc
        session.clear()  # a fresh session: nothing from before sign-in carries over
        session.update({"name": principal.name, "role": principal.role, "since": int(self.clock())})
        csrf_token(session)
        return principal

    def user(self, session: dict[str, Any], client_host: str | None) -> Principal | None:
        if self.open_without_sign_in(client_host):
            csrf_token(session)
            return Principal("loopback", "local")
        name, role, since = session.get("name"), session.get("role"), session.get("since")
        if not isinstance(name, str) or not isinstance(role, str) or not isinstance(since, int):
            return None
        principal = Principal(name, role)
        if principal not in self.known or self.clock() - since > self.lifetime:
            session.clear()
            return None
        return principal


def _sign_in_refusal(exc: AuthError) -> str:
    if exc.detail.startswith("no API tokens"):
        return (
            "This service has no API tokens configured, so it only trusts its own machine. "
            "Open the console from the machine the service runs on, or configure tokens."
        )
    return "That token is not one this service knows. Check it and try again."
