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
import re
import socket
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote

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


# Ranges Python's ipaddress counts as global that still reach inside or are not for hosts:
# IETF protocol assignments (192.0.0.8 and the rest of 192.0.0.0/24) and the IPv6 forms that
# carry an IPv4 address (6to4, NAT64, IPv4-compatible), whose IPv4 part is checked too.
_NOT_FOR_ENDPOINTS = tuple(
    ipaddress.ip_network(n) for n in ("192.0.0.0/24", "64:ff9b::/96", "64:ff9b:1::/48", "::/96")
)
_NAT64 = (ipaddress.ip_network("64:ff9b::/96"), ipaddress.ip_network("64:ff9b:1::/48"))
MAX_LABEL = 63
MAX_HOST = 253
# An IPv4 address as resolvers read it: dotted, with 1 to 4 parts in decimal, octal (0177) or
# hex (0x7f): 127.1, 0x7f000001, 2130706433 and 0 are all addresses, not names.
_IPV4_LIKE = re.compile(r"^[0-9a-fA-FxX.]+$")


def embedded_ipv4(ip: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 one carries: IPv4-mapped, 6to4, NAT64, IPv4-compatible."""
    if ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    if ip.sixtofour is not None:
        return ip.sixtofour
    if any(ip in network for network in _NAT64) or ip in _NOT_FOR_ENDPOINTS[3]:
        return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    return None


def address_refusal(address: str) -> str | None:
    """Why a connection to this address is refused by default; None if it is public."""
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    if ip.is_loopback or ip.is_unspecified:
        return "loopback"  # 0.0.0.0 and :: reach this host
    inner = embedded_ipv4(ip) if isinstance(ip, ipaddress.IPv6Address) else None
    if inner is not None and (why := address_refusal(str(inner))):
        return why
    if ip.is_link_local:
        return "link-local (cloud metadata lives here)"
    if ip.is_private:
        return "private"
    if ip.is_multicast or ip.is_reserved or not ip.is_global:
        return "reserved or shared"
    if any(ip in network for network in _NOT_FOR_ENDPOINTS):
        return "reserved or shared"
    return None


def literal_address(host: str) -> str | None:
    """The address a host written as an IP literal stands for, in its usual spelling (IPv4
    shorthands and hex included); None for a name."""
    try:
        return str(ipaddress.ip_address(host))
    except ValueError:
        pass
    if _IPV4_LIKE.match(host):
        try:
            return socket.inet_ntoa(socket.inet_aton(host))
        except OSError:
            return None
    return None


def target(url: str, *, allow_http: bool, allow_private: bool) -> Target:
    """The parts of an endpoint URL, checked as far as they can be without DNS. The same
    checks run when an admin sets the URL and before every delivery."""
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
    if parsed.port is not None and not 1 <= parsed.port <= 65535:
        raise Refused(f"port {parsed.port} is not a port (1 to 65535)")
    if "%" in host:
        address = literal_address(unquote(host))
        if address and not allow_private and (why := address_refusal(address)):
            raise Refused(f"{host} is {address}, a {why} address")
        raise Refused("the host may not be percent-encoded (write it as it is)")
    ascii_host = parsed.raw_host.decode("ascii", "replace")
    if len(ascii_host) > MAX_HOST or any(
        len(label) > MAX_LABEL for label in ascii_host.rstrip(".").split(".")
    ):
        raise Refused(f"a host name is at most {MAX_HOST} characters, {MAX_LABEL} per label")
    address = literal_address(host.rstrip("."))
    if address is not None and not allow_private and (why := address_refusal(address)):
        raise Refused(f"{host} is a {why} address")
    name = host.rstrip(".").lower()
    loopback_name = name == "localhost" or name.endswith(".localhost")
    if address is None and loopback_name and not allow_private:
        raise Refused(f"{host} is a loopback name")
    port = parsed.port or (443 if parsed.scheme == "https" else 80)
    path = parsed.raw_path.decode("ascii", "replace") or "/"
    return Target(parsed.scheme, host, port, path)


Lookup = Callable[[str, int], Awaitable[list[tuple[Any, ...]]]]


async def default_lookup(host: str, port: int) -> list[tuple[Any, ...]]:
    return await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)


async def resolve(spot: Target, *, allow_private: bool, lookup: Lookup | None = None) -> str:
    """The address to connect to: every address the name resolves to must be allowed (a
    name with one public and one private answer is refused). An IP literal needs no lookup
    (target() checked it). `lookup` does the DNS query (by default on the event loop's
    shared executor; the dispatcher gives each endpoint its own thread for it)."""
    if (literal := literal_address(spot.host.rstrip("."))) is not None:
        return literal
    try:
        infos = await (lookup or default_lookup)(spot.host, spot.port)
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
    address: str | None = None,
) -> Answer:
    """One request to a checked address (`address`: one resolve() gave for the URL's host,
    else resolved here); raises Refused, or httpx's errors for transport failures and
    timeouts."""
    spot = target(url, allow_http=allow_http, allow_private=allow_private)
    if address is None:
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
