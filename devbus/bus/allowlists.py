"""Which hosts and origins are the bus's own: loopback, what it binds, and --allow-host / --allow-origin.

A Host header must name the bus (DNS rebinding: a page's own name resolving to
127.0.0.1 must not reach it), and a browser Origin must be a loopback page or one
given with --allow-origin, matched exactly after parsing (no prefix match, and
``null`` never). The guard (``guard.py``) applies these to every request.
"""

from __future__ import annotations

import functools
import ipaddress
import re

from devbus.bus.settings import Settings
from devbus.errors import ConfigError

__all__ = ["check_allowlists", "host_allowed", "is_loopback_host", "origin_allowed", "same_origin"]

DEFAULT_PORTS = {"http": 80, "https": 443}
WILDCARD_BINDS = frozenset({"", "0.0.0.0", "::", "*"})

# Parsed by hand rather than with urllib, which silently drops tabs and newlines
# and tolerates userinfo, paths and fragments that have no place in these headers.
_HOST = re.compile(r"(?:\[(?P<ipv6>[0-9A-Fa-f:.]+)\]|(?P<name>[A-Za-z0-9._-]+))(?::(?P<port>[0-9]{1,5}))?")
_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*")

Origin = tuple[str, str, int | None]


def is_loopback_host(host: str) -> bool:
    """Whether ``host`` (no port, IPv6 without brackets) names this machine only."""
    host = host.lower().removesuffix(".")
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _parse_host(value: str) -> tuple[str, int | None] | None:
    """Split a Host header into (lowercase host, port), or None if it is malformed."""
    match = _HOST.fullmatch(value)
    if match is None:
        return None
    port = int(match["port"]) if match["port"] else None
    if port is not None and port > 65535:
        return None
    host = (match["ipv6"] or match["name"]).lower()
    if match["ipv6"] is not None:
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            return None
    return host, port


@functools.lru_cache(maxsize=8)
def _extra_hosts(allow_hosts: tuple[str, ...], bind: str) -> frozenset[str]:
    names = {name.lower().strip("[]").removesuffix(".") for name in allow_hosts}
    # An address the bus was told to bind to names it; an IP literal cannot be rebound.
    if bind not in WILDCARD_BINDS:
        names.add(bind.lower().strip("[]"))
    return frozenset(names)


def host_allowed(value: str | None, settings: Settings) -> bool:
    """Whether a Host header names the bus itself (guards against DNS rebinding)."""
    parsed = _parse_host(value) if value else None
    if parsed is None:
        return False
    host, port = parsed
    if is_loopback_host(host):
        return True
    extra = _extra_hosts(settings.allow_hosts, settings.host)
    host = host.removesuffix(".")
    return host in extra or (port is not None and f"{host}:{port}" in extra)


def _parse_origin(value: str) -> Origin | None:
    """Split a serialized origin into (scheme, host, port), default port filled in."""
    scheme, sep, authority = value.partition("://")
    parsed = _parse_host(authority) if sep and _SCHEME.fullmatch(scheme) else None
    if parsed is None:
        return None
    scheme = scheme.lower()
    host, port = parsed
    return scheme, host, port if port is not None else DEFAULT_PORTS.get(scheme)


@functools.lru_cache(maxsize=8)
def _extra_origins(allow_origins: tuple[str, ...]) -> frozenset[Origin]:
    return frozenset(origin for value in allow_origins if (origin := _parse_origin(value)) is not None)


def origin_allowed(origin: str, settings: Settings) -> bool:
    """Whether a browser Origin is a loopback page or one given with --allow-origin."""
    # "null" is what sandboxed iframes and file:// pages send, whoever serves them.
    parsed = _parse_origin(origin)
    if parsed is None:
        return False
    scheme, host, _ = parsed
    if scheme in DEFAULT_PORTS and is_loopback_host(host):
        return True
    return parsed in _extra_origins(settings.allow_origins)


def same_origin(origin: str, host: str) -> bool:
    """Whether ``origin`` is the bus's own page as reached through ``host`` (a Host header)."""
    parsed, own = _parse_origin(origin), _parse_host(host)
    # Only after the Host check passed: with a rebound name both would say evil.com.
    if parsed is None or own is None:
        return False
    scheme, origin_host, origin_port = parsed
    return scheme == "http" and origin_host == own[0] and origin_port == (own[1] or 80)


def check_allowlists(settings: Settings) -> None:
    """Refuse --allow-origin / --allow-host values that could never match, or match anyone."""
    for value in settings.allow_origins:
        if _parse_origin(value) is None:
            raise ConfigError(
                f"--allow-origin {value!r} is not an origin: write it as scheme://host[:port] with no path, "
                "e.g. https://app.example.test ('null' and '*' are never allowed)"
            )
    for value in settings.allow_hosts:
        if _parse_host(value.removesuffix(".")) is None:
            raise ConfigError(f"--allow-host {value!r} is not a host name: write it as NAME or NAME:PORT")
