"""Bearer tokens and roles (docs/guides/security.md).

Tokens are configured as SHA-256 hashes, never in clear: `LEADSCORE_API_TOKENS` holds
comma-separated `name:role:sha256hex` entries (`leadscore token` makes one). With none
configured, the API trusts requests from loopback only, with every role (and
services/http/guards.py keeps other sites' pages in a local browser from using that).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import ipaddress
import secrets
from dataclasses import dataclass

ROLES = ("admin", "viewer", "ingest")
# What each role may do: admins also read; nobody but ingest sends events.
GRANTS = {
    "admin": frozenset({"admin", "viewer"}),
    "viewer": frozenset({"viewer"}),
    "ingest": frozenset({"ingest"}),
    # A local caller when no tokens are configured (make run): everything.
    "local": frozenset({"admin", "viewer", "ingest"}),
}


@dataclass(frozen=True, slots=True)
class Principal:
    """Who is calling: the token's name (for the audit log) and its role."""

    name: str
    role: str

    def may(self, needed: str) -> bool:
        return needed in GRANTS[self.role]


class AuthError(Exception):
    def __init__(self, status: int, code: str, detail: str) -> None:
        self.status, self.code, self.detail = status, code, detail


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def new_token(name: str, role: str) -> tuple[str, str]:
    """A fresh random token and the configuration entry that admits it."""
    token = secrets.token_urlsafe(32)
    return token, f"{name}:{role}:{hash_token(token)}"


def parse_tokens(spec: str | None) -> dict[str, Principal]:
    """`name:role:sha256hex,...` -> {hash: principal}; raises ValueError on a bad entry."""
    table: dict[str, Principal] = {}
    for entry in (spec or "").split(","):
        entry = entry.strip()
        if not entry:
            continue
        parts = entry.split(":")
        if len(parts) != 3 or parts[1] not in ROLES or len(parts[2]) != 64:
            raise ValueError(
                "each API token entry must be name:role:sha256hex with role one of "
                f"{', '.join(ROLES)} (the entry for {parts[0]!r} is not)"
            )
        try:
            bytes.fromhex(parts[2])
        except ValueError as exc:
            raise ValueError(f"the hash for {parts[0]!r} is not hexadecimal") from exc
        table[parts[2].lower()] = Principal(parts[0], parts[1])
    return table


def is_loopback(host: str | None) -> bool:
    if host is None:
        return False
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def authenticate(
    tokens: dict[str, Principal], authorization: str | None, client_host: str | None
) -> Principal:
    """The caller behind an Authorization header, or AuthError (401).

    `Bearer <token>` for every role. Tracking SDKs (Segment's, RudderStack's) send their write
    key as the HTTP Basic user name with an empty password: `Basic` is taken for ingest tokens
    only, so a viewer's or admin's token never travels that way by mistake and still works."""
    if not tokens:
        if is_loopback(client_host):
            return Principal("loopback", "local")
        raise AuthError(401, "unauthorized", "no API tokens are configured: loopback only")
    scheme, _, credentials = (authorization or "").partition(" ")
    basic = scheme.lower() == "basic"
    if basic:
        token = _basic_user(credentials)
    elif scheme.lower() == "bearer":
        token = credentials.strip()
    else:
        token = ""
    if not token:
        raise AuthError(401, "unauthorized", "missing bearer token")
    digest = hash_token(token)
    for known, principal in tokens.items():
        if hmac.compare_digest(known, digest):
            if basic and principal.role != "ingest":
                raise AuthError(
                    401, "unauthorized", "HTTP Basic is for ingest tokens; send Bearer <token>"
                )
            return principal
    raise AuthError(401, "unauthorized", "unknown token")


def _basic_user(credentials: str) -> str:
    """The user name of HTTP Basic credentials (`base64(user:password)`), or ''."""
    if len(credentials) > 1000:
        return ""
    try:
        decoded = base64.b64decode(credentials.strip(), validate=True).decode()
    except (ValueError, UnicodeError):
        return ""
    return decoded.partition(":")[0].strip()


def authorize(principal: Principal, needed: str) -> Principal:
    if not principal.may(needed):
        raise AuthError(403, "forbidden", f"role {principal.role!r} may not do this ({needed})")
    return principal
