"""`devbus run`: every option of the bus, from flags or DEVBUS_* variables."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
from typing import Any
from urllib.parse import urlsplit

import click

from devbus.addresses import check_base_url
from devbus.bus.settings import Settings
from devbus.defaults import DEFAULT_EGRESS, DEFAULT_HOST, DEFAULT_INGEST, DEFAULT_PORT, DEFAULT_URL, MIB
from devbus.logs import configure_logging

__all__ = ["run"]

_SIZE = re.compile(r"^\s*(\d+)\s*(b|k|kb|kib|m|mb|mib|g|gb|gib)?\s*$", re.IGNORECASE)
_UNITS = {"": 1, "b": 1, "k": 1024, "m": 1024**2, "g": 1024**3}


def _size(ctx: click.Context, param: click.Parameter, value: str) -> int:
    """Parse a size in bytes: 1048576, 512k, 1MiB."""
    match = _SIZE.match(value)
    if match is None:
        raise click.BadParameter(f"{value!r} is not a size; use bytes or a unit such as 512k or 1MiB")
    return int(match.group(1)) * _UNITS[(match.group(2) or "")[:1].lower()]


# The options of `devbus run` default to the Settings defaults: one place to change them.
DEFAULTS = Settings()


def _size_text(size: int) -> str:
    """Show a byte size as the user would type it: 1MiB, 512KiB, 1000."""
    for unit, factor in (("MiB", MIB), ("KiB", 1024)):
        if size % factor == 0:
            return f"{size // factor}{unit}"
    return str(size)


def _url_default(part: str) -> str | int:
    url = urlsplit(check_base_url(os.environ.get("DEVBUS_URL") or DEFAULT_URL, option="DEVBUS_URL"))
    if part == "host":
        return url.hostname or DEFAULT_HOST
    return url.port or DEFAULT_PORT


@click.command()
@click.option(
    "--host",
    envvar="DEVBUS_HOST",
    default=lambda: _url_default("host"),
    show_default=DEFAULT_HOST,
    help="Interface for HTTP (loopback unless --token or --insecure).",
)
@click.option(
    "--port",
    envvar="DEVBUS_PORT",
    type=click.IntRange(0, 65535),
    default=lambda: _url_default("port"),
    show_default=str(DEFAULT_PORT),
    help="HTTP port (0 picks a free one).",
)
@click.option("--prefix", envvar="DEVBUS_PREFIX", default=DEFAULTS.prefix, show_default=True, help="API path prefix.")
@click.option(
    "--ingest",
    envvar="DEVBUS_INGEST",
    default=DEFAULT_INGEST,
    show_default=True,
    help="ZeroMQ endpoint to receive events on ('' disables).",
)
@click.option(
    "--egress",
    envvar="DEVBUS_EGRESS",
    default=DEFAULT_EGRESS,
    show_default=True,
    help="ZeroMQ endpoint to publish events on ('' disables).",
)
@click.option("--token", envvar="DEVBUS_TOKEN", default=None, help="Require this token on every endpoint but health.")
@click.option(
    "--allow-origin",
    "allow_origins",
    envvar="DEVBUS_ALLOW_ORIGIN",
    multiple=True,
    help="Another browser origin to accept (repeatable).",
)
@click.option(
    "--allow-host",
    "allow_hosts",
    envvar="DEVBUS_ALLOW_HOST",
    multiple=True,
    help="Another Host header to accept (repeatable).",
)
@click.option("--insecure", envvar="DEVBUS_INSECURE", is_flag=True, help="Allow a non-loopback bind without a token.")
@click.option(
    "--store",
    envvar="DEVBUS_STORE",
    default=DEFAULTS.store,
    show_default=True,
    help="Where events are kept: memory, sqlite:PATH (kept across restarts) or redis://host:port/db.",
)
@click.option(
    "--history",
    envvar="DEVBUS_HISTORY",
    type=click.IntRange(1, 10_000_000),
    default=DEFAULTS.history,
    show_default=True,
    help="Events retained for replay.",
)
@click.option(
    "--history-bytes",
    envvar="DEVBUS_HISTORY_BYTES",
    callback=_size,
    default=_size_text(DEFAULTS.history_bytes),
    show_default=True,
    help="Encoded bytes of events retained for replay (oldest dropped first).",
)
@click.option(
    "--heartbeat",
    envvar="DEVBUS_HEARTBEAT",
    type=click.FloatRange(0.1, 3600),
    default=DEFAULTS.heartbeat,
    show_default=True,
    help="Seconds between SSE heartbeat comments.",
)
@click.option(
    "--retry",
    "retry_ms",
    envvar="DEVBUS_RETRY",
    type=click.IntRange(1, 3_600_000),
    default=DEFAULTS.retry_ms,
    show_default=True,
    help="Milliseconds a browser's EventSource waits before reconnecting (the stream's retry: field).",
)
@click.option(
    "--max-body",
    envvar="DEVBUS_MAX_BODY",
    callback=_size,
    default=_size_text(DEFAULTS.max_body),
    show_default=True,
    help="Largest accepted HTTP body.",
)
@click.option(
    "--header-timeout",
    envvar="DEVBUS_HEADER_TIMEOUT",
    type=click.FloatRange(0.1, 3600),
    default=DEFAULTS.header_timeout,
    show_default=True,
    help="Seconds a connection may take to send a request's headers (and stay idle between requests).",
)
@click.option(
    "--body-timeout",
    envvar="DEVBUS_BODY_TIMEOUT",
    type=click.FloatRange(0.1, 3600),
    default=DEFAULTS.body_timeout,
    show_default=True,
    help="Seconds a POST body may take to arrive (408 beyond).",
)
@click.option(
    "--max-message",
    envvar="DEVBUS_MAX_MESSAGE",
    callback=_size,
    default=_size_text(DEFAULTS.max_message),
    show_default=True,
    help="Largest accepted ZeroMQ message.",
)
@click.option(
    "--egress-buffer",
    envvar="DEVBUS_EGRESS_BUFFER",
    callback=_size,
    default=_size_text(DEFAULTS.egress_buffer),
    show_default=True,
    help="Unsent bytes a ZeroMQ egress listener may fall behind before its events are dropped (counted).",
)
@click.option(
    "--memory-budget",
    envvar="DEVBUS_MEMORY_BUDGET",
    callback=_size,
    default=_size_text(DEFAULTS.memory_budget),
    show_default=True,
    help="Bytes all connections together may hold for their peers (unsent, queued, half-received, subscribed); "
    "beyond it, those holding most are closed first (counted).",
)
@click.option(
    "--max-subscribers",
    envvar="DEVBUS_MAX_SUBSCRIBERS",
    type=click.IntRange(1),
    default=DEFAULTS.max_subscribers,
    show_default=True,
    help="Concurrent SSE subscribers (503 beyond).",
)
@click.option(
    "--max-connections",
    envvar="DEVBUS_MAX_CONNECTIONS",
    type=click.IntRange(8),
    default=None,
    help="HTTP and ZeroMQ connections held at once, together (the last 16 kept for HTTP, so /health gets in); "
    "beyond, a connection quiet for 1 s is displaced, else the new one is refused.  "
    "[default: the open-file limit less 64]",
)
@click.option(
    "--zmq-idle-timeout",
    envvar="DEVBUS_ZMQ_IDLE_TIMEOUT",
    type=click.FloatRange(1, 86400),
    default=DEFAULTS.zmq_idle_timeout,
    show_default=True,
    help="Seconds a ZeroMQ peer may send nothing (no event, no PING) and be sent nothing before it is closed.",
)
@click.option(
    "--subscriber-buffer",
    envvar="DEVBUS_SUBSCRIBER_BUFFER",
    callback=_size,
    default=_size_text(DEFAULTS.subscriber_buffer),
    show_default=True,
    help="Unsent bytes a subscriber may fall behind before it is evicted.",
)
@click.option(
    "--store-key",
    envvar="DEVBUS_STORE_KEY",
    default=DEFAULTS.store_key,
    show_default=True,
    help="Key prefix in a Redis store: buses with the same --store and key share one stream.",
)
@click.option("--forward", envvar="DEVBUS_FORWARD", multiple=True, help="POST every event to this URL (repeatable).")
@click.option(
    "--forward-types", envvar="DEVBUS_FORWARD_TYPES", multiple=True, help="Only forward events matching these globs."
)
@click.option(
    "--forward-queue",
    envvar="DEVBUS_FORWARD_QUEUE",
    type=click.IntRange(1),
    default=DEFAULTS.forward_queue,
    show_default=True,
    help="Events queued per forward target while it is down (oldest dropped beyond).",
)
@click.option("--quiet", "-q", envvar="DEVBUS_QUIET", is_flag=True, help="Do not print a line per event.")
@click.option(
    "--log-level",
    envvar="DEVBUS_LOG_LEVEL",
    default="warning",
    show_default=True,
    type=click.Choice(["debug", "info", "warning", "error"], case_sensitive=False),
)
def run(quiet: bool, log_level: str, **options: Any) -> None:
    """Start the bus and print its URLs, then a line per event."""
    configure_logging(log_level, secrets=[options["token"]])
    for name in ("ingest", "egress"):
        options[name] = options[name] or None
    for name in ("allow_origins", "allow_hosts", "forward", "forward_types"):
        options[name] = tuple(options[name])
    # Imported here: the server pulls in aiohttp, which the client commands never need.
    from devbus.bus.serve import serve

    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve(Settings(**options), quiet=quiet))
