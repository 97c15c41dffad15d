"""Check the addresses a user types (--url, --ingest, --egress, --prefix) and say how to fix them."""

from __future__ import annotations

import re
from urllib.parse import urlsplit

from devbus.errors import ConfigError

__all__ = ["check_base_url", "check_endpoint", "check_prefix"]

_PORT = re.compile(r"^\d{1,5}$")
_HOST_PORT = re.compile(r"^(\[[0-9a-fA-F:.]+\]|[\w.-]+|\*):(\d{1,5}|\*)$")
_OTHER_TRANSPORTS = frozenset({"ipc", "inproc", "ws", "wss", "pgm", "epgm", "udp", "tipc", "vmci"})
_PREFIX = re.compile(r"^(/[A-Za-z0-9._~!$&'()*+,;=:@%-]+)*/?$")


def check_endpoint(endpoint: str, *, option: str) -> str:
    """Return ``endpoint`` if it is a ZeroMQ endpoint devbus can use (tcp:// or ipc://), else say how to write it."""
    value = endpoint.strip()
    if _PORT.match(value):
        raise ConfigError(f"{option} {value!r} is not a ZeroMQ endpoint: write tcp://127.0.0.1:{value}")
    if _HOST_PORT.match(value):
        raise ConfigError(f"{option} {value!r} is not a ZeroMQ endpoint: write tcp://{value}")
    scheme, _, rest = value.partition("://")
    if scheme == "tcp":
        host, _, port = rest.rpartition(":")
        if host and (port == "*" or (port.isdigit() and 0 < int(port) < 65536)):
            return value
        raise ConfigError(
            f"{option} {value!r} needs a host and a port from 1 to 65535 (or *): e.g. tcp://127.0.0.1:8766"
        )
    if scheme in _OTHER_TRANSPORTS and rest:
        return value
    raise ConfigError(
        f"{option} {value!r} is not a ZeroMQ endpoint: write tcp://HOST:PORT (e.g. tcp://127.0.0.1:8766) or ipc:///PATH"
    )


def check_base_url(url: str, *, option: str) -> str:
    """Return the bus's HTTP base ``url`` without a trailing slash, else say how to write it."""
    value = url.strip().rstrip("/")
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ConfigError(f"{option} {url!r} is not an HTTP address: write http://{value.split('://')[-1]}")
    try:
        parts.port  # noqa: B018 (urllib validates the port when it is read)
    except ValueError as exc:
        raise ConfigError(f"{option} {url!r} has a bad port ({exc}): e.g. http://127.0.0.1:8765") from exc
    if parts.path or parts.query or parts.fragment:
        base = f"{parts.scheme}://{parts.netloc}"
        raise ConfigError(
            f"{option} {url!r} is the bus's base address, without a path: write {base} "
            "(the API prefix is --prefix / DEVBUS_PREFIX)"
        )
    return value


def check_prefix(prefix: str, *, option: str = "--prefix") -> str:
    """Return the API ``prefix`` if it is a URL path such as /api/dev, else say how to write it."""
    if not prefix.startswith("/") and prefix:
        raise ConfigError(f"{option} {prefix!r} must start with '/': write /{prefix.lstrip('/')}")
    if not _PREFIX.match(prefix):
        raise ConfigError(f"{option} {prefix!r} is not a URL path: use letters, digits, '-', '_', '.' such as /api/dev")
    return prefix
