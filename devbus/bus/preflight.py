"""What `devbus run` checks before it binds anything: well-formed options and free addresses."""

from __future__ import annotations

import contextlib
import errno
import json
import socket
import urllib.request
from urllib.parse import urlsplit

from devbus.addresses import check_endpoint, check_prefix
from devbus.bus.budget import SMALLEST
from devbus.bus.settings import Settings
from devbus.errors import ConfigError

__all__ = ["check_addresses_free", "check_options"]

HEALTH_TIMEOUT = 1.0


def check_options(settings: Settings) -> None:
    """Refuse a malformed --prefix, --ingest or --egress, or too small a --memory-budget, saying what would do."""
    check_prefix(settings.prefix)
    for endpoint, option in ((settings.ingest, "--ingest"), (settings.egress, "--egress")):
        if endpoint:
            check_endpoint(endpoint, option=option)
    if settings.memory_budget < SMALLEST:
        raise ConfigError(
            f"--memory-budget {settings.memory_budget} bytes is too small: give connections at least 1MiB "
            "together (the default is 128MiB)"
        )


def _in_use(host: str, port: int) -> bool:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        # The same option the real bind uses, so a port in TIME_WAIT is not a conflict.
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as exc:
            return exc.errno == errno.EADDRINUSE
    return False


def _tcp_address(endpoint: str) -> tuple[str, int] | None:
    parts = urlsplit(endpoint)
    host, _, port = parts.netloc.rpartition(":")
    if parts.scheme != "tcp" or not port.isdigit() or host in ("*", ""):
        return None
    return host.strip("[]"), int(port)


def _running_devbus(settings: Settings) -> str | None:
    """The health of a devbus answering on our HTTP address, as a short phrase, if one does."""
    host = f"[{settings.host}]" if ":" in settings.host else settings.host
    base = f"http://{host}:{settings.port}"
    for api in dict.fromkeys((settings.api, "/api/dev")):
        with contextlib.suppress(OSError, ValueError):
            with urllib.request.urlopen(f"{base}{api}/health", timeout=HEALTH_TIMEOUT) as reply:
                health = json.load(reply)
            if isinstance(health, dict) and health.get("status") == "ok":
                return f"{base} (devbus {health.get('version')}, up {float(health.get('uptime_s', 0)):.0f}s)"
    return None


def check_addresses_free(settings: Settings) -> None:
    """Report every address already in use, and a devbus already running, in one line."""
    conflicts: list[tuple[str, str]] = []
    if settings.port and _in_use(settings.host, settings.port):
        conflicts.append((f"HTTP {settings.host}:{settings.port}", "--port 0"))
    for endpoint, option in ((settings.ingest, "--ingest"), (settings.egress, "--egress")):
        address = _tcp_address(endpoint or "")
        if address is not None and _in_use(*address):
            conflicts.append((f"{option[2:]} {endpoint}", f"{option} 'tcp://{address[0]}:*'"))
    if not conflicts:
        return
    running = _running_devbus(settings) if settings.port else None
    in_use = ", ".join(what for what, _ in conflicts)
    elsewhere = "devbus run " + " ".join(fix for _, fix in conflicts)
    if running:
        raise ConfigError(
            f"a devbus is already running at {running}, holding {in_use}: use it, stop it (Ctrl-C in its "
            f"terminal), or start this one elsewhere: {elsewhere}"
        )
    raise ConfigError(f"address already in use: {in_use}; stop what holds it, or start elsewhere: {elsewhere}")
