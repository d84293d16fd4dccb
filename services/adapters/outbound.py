"""Outbound HTTP that cannot be turned against the service's own network.

An endpoint URL is checked when an admin sets it and again at every delivery, after DNS
resolution: a name that resolves to a loopback, private, link-local (cloud metadata,
169.254.169.254), shared, multicast or reserved address is refused, unless the setting
`outbound_allow_private` allows it; plain http only with `outbound_allow_http`. The request
then goes to the address that was checked (the name is sent as Host and as TLS SNI), so a
second DNS answer cannot swap in another address; redirects are never followed.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
import time
from dataclasses import dataclass

import httpx

ANSWER_EXCERPT = 500
# An answer's body is read this far at most (a CRM's per-record results fit well within).
MAX_ANSWER_BYTES = 256 * 1024


class Refused(Exception):
    """The URL may not be called: its reason, in words."""


@dataclass(frozen=True, slots=True)
class Target:
    scheme: str
    host: str
    port: int
    path: str  # with its query


@dataclass(frozen=True, slots=True)
class Answer:
    status: int
    headers: httpx.Headers
    body: bytes  # up to MAX_ANSWER_BYTES
    latency_ms: float

    @property
    def excerpt(self) -> str:
        return self.body[:ANSWER_EXCERPT].decode("utf-8", "replace")


def address_refusal(address: str) -> str | None:
    """Why a connection to this address is refused by default; None if it is public."""
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    if ip.is_loopback or ip.is_unspecified:
        return "loopback"  # 0.0.0.0 and :: reach this host
    if ip.is_link_local:
        return "link-local (cloud metadata lives here)"
    if ip.is_private:
        return "private"
    if ip.is_multicast or ip.is_reserved or ip.is_unspecified or not ip.is_global:
        return "reserved or shared"
    return None


def target(url: str, *, allow_http: bool, allow_private: bool) -> Target:
    """The parts of an endpoint URL, checked as far as they can be without DNS."""
    try:
        parsed = httpx.URL(url)
    except (httpx.InvalidURL, TypeError, ValueError) as exc:
        raise Refused(f"not a URL: {exc}") from None
    if parsed.scheme not in ("https", "http"):
        raise Refused("the URL must be https")
    if parsed.scheme == "http" and not allow_http:
        raise Refused("the URL must be https (plain http is not allowed by the settings)")
    if parsed.userinfo:
        raise Refused("the URL may not carry a user name or password")
    host = parsed.host
    if not host:
        raise Refused("the URL has no host")
    if parsed.fragment:
        raise Refused("the URL may not have a fragment")
    try:
        ipaddress.ip_address(host)
        literal = True
    except ValueError:
        literal = False
    if literal and not allow_private and (why := address_refusal(host)):
        raise Refused(f"{host} is a {why} address")
    if not literal and (host == "localhost" or host.endswith(".localhost")) and not allow_private:
        raise Refused(f"{host} is a loopback name")
    port = parsed.port or (443 if parsed.scheme == "https" else 80)
    path = parsed.raw_path.decode("ascii", "replace") or "/"
    return Target(parsed.scheme, host, port, path)


async def resolve(spot: Target, *, allow_private: bool) -> str:
    """The address to connect to: every address the name resolves to must be allowed (a
    name with one public and one private answer is refused)."""
    loop = asyncio.get_running_loop()
    try:
        infos = await loop.getaddrinfo(spot.host, spot.port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as exc:
        raise Refused(f"{spot.host} does not resolve: {exc}") from None
    addresses = list(dict.fromkeys(str(info[4][0]) for info in infos))
    if not addresses:
        raise Refused(f"{spot.host} does not resolve")
    if not allow_private:
        for address in addresses:
            if why := address_refusal(address):
                raise Refused(f"{spot.host} resolves to {address}, a {why} address")
    return addresses[0]


async def send(
    client: httpx.AsyncClient,
    method: str,
    url: str,
    *,
    headers: dict[str, str],
    body: bytes,
    timeout: float,
    allow_http: bool,
    allow_private: bool,
) -> Answer:
    """One request to a checked address; raises Refused, or httpx's errors for transport
    failures and timeouts."""
    spot = target(url, allow_http=allow_http, allow_private=allow_private)
    address = await resolve(spot, allow_private=allow_private)
    host_header = spot.host if spot.port in (80, 443) else f"{spot.host}:{spot.port}"
    literal = f"[{address}]" if ":" in address else address
    pinned = f"{spot.scheme}://{literal}:{spot.port}{spot.path}"
    extensions = {"sni_hostname": spot.host} if spot.scheme == "https" else {}
    started = time.perf_counter()
    request = client.build_request(
        method,
        pinned,
        headers={**headers, "host": host_header},
        content=body,
        timeout=timeout,
        extensions=extensions,
    )
    # The whole exchange, not each read, is bounded by the timeout: a receiver that drips
    # its answer byte by byte is cut off like one that never answers.
    async with asyncio.timeout(timeout):
        response = await client.send(request, stream=True, follow_redirects=False)
        try:
            received = bytearray()
            async for chunk in response.aiter_raw():
                received += chunk
                if len(received) >= MAX_ANSWER_BYTES:
                    break
        finally:
            await response.aclose()
    latency = (time.perf_counter() - started) * 1000
    return Answer(
        response.status_code, response.headers, bytes(received[:MAX_ANSWER_BYTES]), latency
    )
