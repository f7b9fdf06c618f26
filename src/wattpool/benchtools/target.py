"""Which URLs the load generator may aim at: loopback only, unless told otherwise.

A load generator pointed at the wrong host is a denial-of-service tool, so the default
is strict: an IP literal in 127.0.0.0/8 or ::1, or the name ``localhost`` when it
resolves only to such addresses. Other names are refused without being resolved (a
DNS query is already traffic that leaves the machine). ``allow_remote`` lifts the rule
for someone who owns the target.
"""

from __future__ import annotations

import ipaddress
import socket

import httpx


class TargetRefused(ValueError):
    """The base URL is not a loopback address and remote targets were not allowed."""


def is_loopback_host(host: str) -> bool:
    """True for 127.0.0.0/8 and ::1 literals, and for 'localhost' resolving to them."""
    host = host.strip("[]")
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        pass
    if host.lower().rstrip(".") != "localhost":
        return False
    try:
        infos = socket.getaddrinfo(host, None)
    except socket.gaierror:
        return False
    addresses = {info[4][0] for info in infos}
    return bool(addresses) and all(
        ipaddress.ip_address(str(a).split("%")[0]).is_loopback for a in addresses
    )


def check_target(base_url: str, *, allow_remote: bool = False) -> httpx.URL:
    """The parsed base URL; raises TargetRefused for a non-loopback host."""
    url = httpx.URL(base_url)
    if url.scheme not in ("http", "https") or not url.host:
        raise TargetRefused(f"{base_url!r} is not an http(s) URL with a host")
    if not allow_remote and not is_loopback_host(url.host):
        raise TargetRefused(
            f"refusing to send load to {url.host!r}: only loopback targets (127.0.0.0/8, "
            "::1, localhost) are allowed; pass --allow-remote for a host you own"
        )
    return url
