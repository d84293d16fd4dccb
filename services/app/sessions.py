"""Console sessions, kept in PostgreSQL (docs/guides/console.md, docs/guides/security.md).

Signing in stores a row and gives the browser a random secret; the row is keyed by the
secret's SHA-256, so the table holds nothing a browser could present. A session ends when its
owner signs out, after `console_idle_minutes` without a request, `console_session_hours` after
sign-in however active, when an admin ends it (one, or every session of a token), and at its
next request once its token is no longer configured. Rows live in the database, so every
instance behind one address shares them and a restart signs nobody out.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from sqlalchemy.ext.asyncio import AsyncEngine

from schemas import api
from services.adapters.postgres import session_store
from services.adapters.postgres.db import Connection, connection, transaction
from services.adapters.postgres.rule_set_store import record_audit
from services.auth import AuthError, Principal, authenticate, hash_token

# A token that signs in over and over keeps this many sessions; its oldest end first.
MAX_SESSIONS_PER_TOKEN = 50
# last_seen_at is written at most this often per session: an idle timeout of minutes does not
# need a write per page view.
TOUCH_EVERY_SECONDS = 60.0
# What is kept of the browser's User-Agent (shown to admins, escaped).
MAX_USER_AGENT = 200


class SignInRefused(Exception):
    """The token is not one this service knows (or none are configured and the caller is
    not local); `reason` says which, in words for the sign-in page."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True, slots=True)
class Session:
    """A signed-in console user: who, the CSRF token of their forms, and when."""

    id: str
    principal: Principal
    csrf: str
    created_at: datetime
    last_seen_at: datetime


def session_id(secret: str) -> str:
    """The row of the session whose cookie holds `secret`."""
    return hashlib.sha256(secret.encode()).hexdigest()


class ConsoleSessions:
    """Opens, finds and ends console sessions against the configured tokens."""

    def __init__(
        self,
        engine: AsyncEngine,
        tokens: dict[str, Principal],
        *,
        idle_seconds: float,
        lifetime_seconds: float,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.engine = engine
        self.tokens = tokens
        self.idle_seconds = idle_seconds
        self.lifetime_seconds = lifetime_seconds
        self.clock = clock

    def _now(self) -> datetime:
        return datetime.fromtimestamp(self.clock(), UTC)

    def expires_at(self, created_at: datetime, last_seen_at: datetime) -> datetime:
        """Whichever comes first: the idle timeout or the absolute lifetime."""
        return min(
            last_seen_at + timedelta(seconds=self.idle_seconds),
            created_at + timedelta(seconds=self.lifetime_seconds),
        )

    async def sign_in(
        self, token: str, *, client: str | None, user_agent: str | None
    ) -> tuple[str, Session]:
        """Check the token as the API would; a new session and the secret for its cookie."""
        if not self.tokens:  # the open local console has nobody to sign in
            raise SignInRefused("no API tokens are configured: loopback only")
        try:
            principal = authenticate(self.tokens, f"Bearer {token}", client)
        except AuthError as exc:
            raise SignInRefused(exc.detail) from exc
        secret = secrets.token_urlsafe(32)
        now = self._now()
        session = Session(session_id(secret), principal, secrets.token_urlsafe(24), now, now)
        async with transaction(self.engine) as pg:
            await self._purge_expired(pg, now)
            await session_store.insert_session(
                pg,
                key=session.id,
                token_name=principal.name,
                role=principal.role,
                token_hash=hash_token(token),
                csrf=session.csrf,
                client=client,
                user_agent=_printable(user_agent),
                now=now,
            )
            await session_store.keep_newest(pg, principal.name, MAX_SESSIONS_PER_TOKEN)
        return secret, session

    async def current(self, secret: str) -> Session | None:
        """The live session behind a cookie, or None (ending it if it has expired or its
        token is gone). Refreshes its last-seen time."""
        if not secret or len(secret) > 100:
            return None
        key = session_id(secret)
        async with connection(self.engine) as pg:
            row = await session_store.session(pg, key)
            if row is None:
                return None
            now = self._now()
            principal = Principal(row["token_name"], row["role"])
            configured = self.tokens.get(row["token_hash"])
            if configured != principal or now >= self.expires_at(
                row["created_at"], row["last_seen_at"]
            ):
                await session_store.delete_session(pg, key)
                return None
            last_seen = row["last_seen_at"]
            if (now - last_seen).total_seconds() >= TOUCH_EVERY_SECONDS:
                await session_store.touch(pg, key, now)
                last_seen = now
        return Session(key, principal, row["csrf"], row["created_at"], last_seen)

    async def sign_out(self, secret: str) -> None:
        async with connection(self.engine) as pg:
            await session_store.delete_session(pg, session_id(secret))

    async def listing(self) -> list[api.ConsoleSession]:
        """Every live session, newest first (for admins: no secrets in it)."""
        async with connection(self.engine) as pg:
            await self._purge_expired(pg, self._now())
            rows = await session_store.sessions(pg)
        return [
            api.ConsoleSession(
                id=r["id"],
                token_name=r["token_name"],
                role=r["role"],
                client=r["client"],
                user_agent=r["user_agent"],
                created_at=r["created_at"],
                last_seen_at=r["last_seen_at"],
                expires_at=self.expires_at(r["created_at"], r["last_seen_at"]),
                token_configured=self.tokens.get(r["token_hash"])
                == Principal(r["token_name"], r["role"]),
            )
            for r in rows
        ]

    async def end(self, key: str, *, by: str) -> bool:
        """End one session by its id (as listed); audited. False if there was none."""
        async with transaction(self.engine) as pg:
            owner = await session_store.delete_session(pg, key)
            if owner is not None:
                await record_audit(
                    pg,
                    actor=by,
                    action="session.end",
                    target=key,
                    detail={"token_name": owner},
                )
        return owner is not None

    async def end_all(self, *, token_name: str | None, by: str) -> int:
        """End every session of one token (by its name), or every session at all (None, for
        an incident); audited. How many ended."""
        async with transaction(self.engine) as pg:
            ended = await session_store.delete_sessions(pg, token_name)
            await record_audit(
                pg,
                actor=by,
                action="session.end_all",
                target=token_name,
                detail={"ended": ended},
            )
        return ended

    async def _purge_expired(self, pg: Connection, now: datetime) -> None:
        await session_store.purge_expired(
            pg,
            idle_since=now - timedelta(seconds=self.idle_seconds),
            born_before=now - timedelta(seconds=self.lifetime_seconds),
        )


def _printable(user_agent: str | None) -> str | None:
    """The User-Agent as kept: cut to its limit, without the control characters (NUL among
    them, which PostgreSQL refuses) a hostile client may put in a header."""
    kept = "".join(ch for ch in (user_agent or "")[:MAX_USER_AGENT] if ch.isprintable())
    return kept or None


def same_secret(expected: str, offered: str | None) -> bool:
    """A constant-time comparison of a CSRF token with what a form offered."""
    return bool(offered) and hmac.compare_digest(expected, offered or "")
