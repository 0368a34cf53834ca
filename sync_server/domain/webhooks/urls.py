"""Where a webhook may be sent (SSRF): http(s) URLs whose host resolves to public addresses only.

Checked when an endpoint is created or changed (`check`, `resolve`) and again at every delivery,
after DNS resolution (`resolve`): the delivery then connects to the address that was checked
(`pinned`), so a name that resolves to a public address at the check and to 127.0.0.1 a moment later
(DNS rebinding) reaches nothing private. Loopback, private, link-local, shared (CGNAT), reserved,
multicast and unspecified addresses are refused unless WEBHOOK_ALLOW_PRIVATE_URLS=true.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from dataclasses import dataclass
from urllib.parse import urlsplit, urlunsplit

MAX_URL_LENGTH = 2048
RESOLVE_SECONDS = 5.0  # a name that takes longer to resolve is refused


class Refused(ValueError):
    """The URL may not be used; the message says why (safe to show its owner)."""


@dataclass(frozen=True)
class Target:
    """A checked URL: where to connect (an address) and what to say (Host, TLS server name)."""

    url: str  # the URL with its host replaced by the checked address
    host_header: str
    server_name: str | None  # TLS SNI and certificate name (https)


def check(url: str) -> tuple[str, str, int]:
    """(scheme, host, port) of a usable URL's syntax, else Refused."""
    if len(url) > MAX_URL_LENGTH:
        raise Refused(f"at most {MAX_URL_LENGTH} characters")
    if any(c.isspace() or ord(c) < 0x20 for c in url):
        raise Refused("must not contain spaces or control characters")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise Refused(f"not a URL ({exc})") from None
    if parts.scheme not in ("http", "https"):
        raise Refused("must be an http or https URL")
    if not parts.hostname:
        raise Refused("must name a host")
    if parts.username is not None or parts.password is not None:
        raise Refused("must not carry credentials (user:password@); put a token in the path or query instead")
    if parts.fragment:
        raise Refused("must not have a #fragment")
    return parts.scheme, parts.hostname, port or (443 if parts.scheme == "https" else 80)


def is_public(address: str) -> bool:
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.is_global and not ip.is_multicast


async def resolve(url: str, *, allow_private: bool) -> list[str]:
    """The addresses `url`'s host resolves to, all of them allowed; Refused otherwise (also when the
    name does not resolve)."""
    _, host, port = check(url)
    try:
        async with asyncio.timeout(RESOLVE_SECONDS):
            infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError, TimeoutError) as exc:
        raise Refused(f"host {host!r} does not resolve ({exc.__class__.__name__})") from None
    addresses = list(dict.fromkeys(str(info[4][0]) for info in infos))
    if not addresses:
        raise Refused(f"host {host!r} does not resolve")
    if not allow_private:
        private = [a for a in addresses if not is_public(a)]
        if private:
            raise Refused(f"host {host!r} resolves to a non-public address ({private[0]})")
    return addresses


def pinned(url: str, address: str) -> Target:
    """`url` aimed at `address` (one that `resolve` returned), keeping its Host and TLS name."""
    parts = urlsplit(url)
    scheme, host, port = check(url)
    literal = f"[{address}]" if ":" in address else address
    default = (scheme == "https" and port == 443) or (scheme == "http" and port == 80)
    netloc = literal if default else f"{literal}:{port}"
    shown_host = f"[{host}]" if ":" in host else host
    host_header = shown_host if default else f"{shown_host}:{port}"
    return Target(
        urlunsplit((scheme, netloc, parts.path or "/", parts.query, "")),
        host_header,
        host if scheme == "https" else None,
    )
