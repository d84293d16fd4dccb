"""What a web page in someone's browser must not be able to make the service do
(docs/guides/security.md), checked before any route runs, for the API and the console alike.

- **A foreign Host** gets 421. A DNS-rebinding page is served under a name of its own that it
  then points at this machine; the browser sends that name as Host, so refusing names the
  service was not told about stops it reading or writing anything. IP literals are always
  admitted: a browser sends one only to a page whose origin is that address, the service
  itself.
- **A cross-origin write without a bearer token** gets 403. Loopback callers need no token
  when none are configured (`make run`), and a browser on that machine is a loopback caller
  for any page it shows. Browsers name the page that sent a request in `Origin` (and
  `Sec-Fetch-Site`); a state-changing request from another origin is refused. Bearer tokens
  are never attached by a browser on its own, so requests that carry one are left alone.
- **An API write without a bearer token in a content type its endpoint does not document**
  gets 415: without that, a form or a `text/plain` fetch (which a browser sends anywhere
  without asking) could still publish a rule set from a browser that sends no Origin.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable, Iterable
from typing import Any

from services.http.common import path_pattern, send_error

UNSAFE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
# Sec-Fetch-Site values a request from this service's own pages (or typed by hand) has.
OWN_SITE = frozenset({"same-origin", "none"})
# Other names YAML goes by; the API documents application/yaml.
CONTENT_TYPE_ALIASES = {"application/x-yaml": "application/yaml", "text/yaml": "application/yaml"}
LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1")


class AllowedHosts:
    """The Host names the service answers to: loopback names, the listening address, IP
    literals, and the configured ones (`.example.com` admits its subdomains, `*` any name)."""

    def __init__(self, configured: str, listen_host: str) -> None:
        names = {n.strip().lower().rstrip(".") for n in configured.split(",") if n.strip()}
        self.any = "*" in names
        self.suffixes = tuple(n for n in names if n.startswith("."))
        self.names = {n for n in names if not n.startswith(".")} | set(LOOPBACK_NAMES)
        self.names.add(listen_host.strip("[]").lower())

    def admits(self, host_header: str | None) -> bool:
        name = host_name(host_header)
        if name is None:
            return False
        if self.any or name in self.names or name.endswith(self.suffixes):
            return True
        try:
            ipaddress.ip_address(name)
        except ValueError:
            return False
        return True


def host_name(value: str | None) -> str | None:
    """The name in a Host header, lower case, without port or trailing dot (None: malformed)."""
    if not value or len(value) > 300:
        return None
    value = value.strip().lower()
    if value.startswith("["):
        end = value.find("]")
        if end < 0:
            return None
        name, rest = value[1:end], value[end + 1 :]
    else:
        name, colon, port = value.partition(":")
        rest = colon + port
    if rest and not (rest.startswith(":") and rest[1:].isdigit()):
        return None
    name = name.rstrip(".")
    return name or None


def _netloc(value: str) -> str:
    """host[:port] of an origin or Host value, lower case, without a default port."""
    value = value.strip().lower()
    for default in (":80", ":443"):
        if value.endswith(default):
            return value[: -len(default)]
    return value


def cross_origin_refusal(headers: dict[bytes, bytes]) -> str | None:
    """Why a write without a bearer token looks like it came from another site's page."""
    site = headers.get(b"sec-fetch-site")
    if site is not None and site.decode("latin-1").strip().lower() not in OWN_SITE:
        return f"Sec-Fetch-Site is {site.decode('latin-1')[:40]!r}"
    origin = headers.get(b"origin")
    if origin is None:
        return None
    text = origin.decode("latin-1")
    scheme, sep, rest = text.partition("://")
    host = headers.get(b"host", b"").decode("latin-1")
    if not sep or scheme.lower() not in ("http", "https") or _netloc(rest) != _netloc(host):
        return f"Origin {text[:100]!r} is not this service"
    return None


def media_type(value: bytes | None) -> str | None:
    if value is None:
        return None
    main = value.decode("latin-1").split(";", 1)[0].strip().lower()
    return CONTENT_TYPE_ALIASES.get(main, main)


class DocumentedContentTypes:
    """Which content types each API operation documents, read from the OpenAPI document
    (built on first use, once every route is registered)."""

    def __init__(self, openapi: Callable[[], dict[str, Any]]) -> None:
        self._openapi = openapi
        self._table: list[tuple[re.Pattern[str], str, frozenset[str]]] | None = None

    def for_request(self, method: str, path: str) -> frozenset[str] | None:
        """The documented types (empty: no body), or None for a path the API does not have."""
        if self._table is None:
            self._table = list(self._build(self._openapi()["paths"].items()))
        for pattern, verb, types in self._table:
            if verb == method and pattern.fullmatch(path):
                return types
        return None

    @staticmethod
    def _build(
        paths: Iterable[tuple[str, dict[str, Any]]],
    ) -> Iterable[tuple[re.Pattern[str], str, frozenset[str]]]:
        for template, operations in paths:
            pattern = path_pattern(template)
            for verb, operation in operations.items():
                content = (operation.get("requestBody") or {}).get("content") or {}
                yield pattern, verb.upper(), frozenset(content)


class BrowserGuard:
    """ASGI middleware: the three checks above, before the app sees the request."""

    def __init__(
        self,
        app: Any,
        *,
        hosts: AllowedHosts,
        content_types: DocumentedContentTypes,
        api_prefix: str = "/v1/",
    ) -> None:
        self.app = app
        self.hosts = hosts
        self.content_types = content_types
        self.api_prefix = api_prefix

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers: dict[bytes, bytes] = {}
        for key, value in scope.get("headers") or []:
            headers.setdefault(key.lower(), value)
        host = headers.get(b"host")
        if not self.hosts.admits(host.decode("latin-1") if host is not None else None):
            await send_error(
                send,
                scope["path"],
                421,
                "unknown_host",
                "this service does not answer to that Host name; add it to "
                "LEADSCORE_ALLOWED_HOSTS if it is one of its own",
            )
            return
        method = scope["method"]
        authorization = headers.get(b"authorization", b"")
        if method in UNSAFE_METHODS and authorization[:7].lower() != b"bearer ":
            refusal = cross_origin_refusal(headers)
            if refusal is not None:
                await send_error(
                    send,
                    scope["path"],
                    403,
                    "cross_origin_refused",
                    f"a write from another site's page is refused ({refusal}); "
                    "programs send no Origin, or a bearer token",
                )
                return
            if scope["path"].startswith(self.api_prefix):
                problem = self._content_type_problem(method, scope["path"], headers)
                if problem is not None:
                    await send_error(send, scope["path"], 415, "unsupported_media_type", problem)
                    return
        await self.app(scope, receive, send)

    def _content_type_problem(
        self, method: str, path: str, headers: dict[bytes, bytes]
    ) -> str | None:
        documented = self.content_types.for_request(method, path)
        if documented is None:
            return None  # no such operation: the router answers 404 or 405
        sent = media_type(headers.get(b"content-type"))
        declared = headers.get(b"content-length", b"0")
        chunked = b"transfer-encoding" in headers
        has_body = sent is not None or chunked or declared not in (b"0", b"")
        if not has_body:
            return None
        if not documented:
            return "this endpoint takes no body"
        if sent not in documented:
            return f"this endpoint takes {' or '.join(sorted(documented))}, not {sent or 'none'}"
        return None
