"""The `devbus` command line: run the bus, and talk to it from a shell."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
from typing import Any
from urllib.parse import urlsplit

import click

from devbus import __version__
from devbus.commands import emit, history, listen
from devbus.envelope import MAX_SOURCE_LENGTH, MAX_TYPE_LENGTH, check_name
from devbus.errors import DevbusError, InvalidEvent
from devbus.globs import split_patterns
from devbus.logs import configure_logging
from devbus.publisher import Publisher
from devbus.settings import DEFAULT_EGRESS, DEFAULT_HOST, DEFAULT_INGEST, DEFAULT_PORT, DEFAULT_URL, MIB, Settings
from devbus.watch import DEFAULT_IGNORES, WatchFilter, emit_changes

__all__ = ["main"]

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


class DevbusGroup(click.Group):
    """Turn every DevbusError into one clear line and a non-zero exit, in one place."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except DevbusError as exc:
            raise click.ClickException(str(exc)) from exc


@click.group(cls=DevbusGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="devbus")
def main() -> None:
    """devbus: a local development event bus (HTTP + SSE + ZeroMQ)."""


def _url_default(part: str) -> str | int:
    url = urlsplit(os.environ.get("DEVBUS_URL") or DEFAULT_URL)
    if part == "host":
        return url.hostname or DEFAULT_HOST
    return url.port or DEFAULT_PORT


@main.command()
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
    type=int,
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
    "--max-body",
    envvar="DEVBUS_MAX_BODY",
    callback=_size,
    default=_size_text(DEFAULTS.max_body),
    show_default=True,
    help="Largest accepted HTTP body.",
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
    "--ingest-queue",
    envvar="DEVBUS_INGEST_QUEUE",
    type=click.IntRange(1),
    default=DEFAULTS.ingest_queue,
    show_default=True,
    help="ZeroMQ messages queued for the bus before senders are made to wait.",
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
    "--subscriber-buffer",
    envvar="DEVBUS_SUBSCRIBER_BUFFER",
    callback=_size,
    default=_size_text(DEFAULTS.subscriber_buffer),
    show_default=True,
    help="Unsent bytes a subscriber may fall behind before it is evicted.",
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
    from devbus.server import serve

    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve(Settings(**options), quiet=quiet))


@main.command()
@click.argument("paths", metavar="PATH...", nargs=-1, required=True, type=click.Path(exists=True))
@click.option(
    "--glob",
    "globs",
    envvar="DEVBUS_WATCH_GLOB",
    multiple=True,
    help="Only report files matching these globs (repeatable, comma lists, {a,b}), e.g. 'src/**/*.{ts,tsx}'.",
)
@click.option(
    "--ignore",
    "ignores",
    envvar="DEVBUS_WATCH_IGNORE",
    multiple=True,
    help=f"Also ignore these names or paths (repeatable, comma lists); always ignored: {', '.join(DEFAULT_IGNORES)}.",
)
@click.option(
    "--type",
    "event_type",
    envvar="DEVBUS_WATCH_TYPE",
    default="frontend.file_changed",
    show_default=True,
    help="Type of the events.",
)
@click.option(
    "--debounce-ms",
    envvar="DEVBUS_WATCH_DEBOUNCE_MS",
    type=click.IntRange(1, 60_000),
    default=50,
    show_default=True,
    help="Quiet time that ends a burst of changes.",
)
@click.option(
    "--source", envvar="DEVBUS_WATCH_SOURCE", default="watch", show_default=True, help="Source of the events."
)
@click.option("--batch", envvar="DEVBUS_WATCH_BATCH", is_flag=True, help="One event per burst: {changes: [...]}.")
@click.option("--quiet", "-q", envvar="DEVBUS_QUIET", is_flag=True, help="Do not print a line per event.")
@click.option("--ingest", envvar="DEVBUS_INGEST", default=None, help="The bus's ZeroMQ ingest (DEVBUS_INGEST).")
@click.option("--token", envvar="DEVBUS_TOKEN", default=None, help="The bus's token, if it has one (DEVBUS_TOKEN).")
@click.option("--timeout", type=click.FloatRange(0.1), default=5.0, show_default=True, help="Seconds to find the bus.")
def watch(
    paths: tuple[str, ...],
    globs: tuple[str, ...],
    ignores: tuple[str, ...],
    event_type: str,
    debounce_ms: int,
    source: str,
    batch: bool,
    quiet: bool,
    ingest: str | None,
    token: str | None,
    timeout: float,
) -> None:
    """Emit an event for every file that changes under PATH."""
    for value, name in ((event_type, "--type"), (source, "--source")):
        try:
            check_name(value, field=name, max_length=MAX_SOURCE_LENGTH if name == "--source" else MAX_TYPE_LENGTH)
        except InvalidEvent as exc:
            raise click.BadParameter(str(exc), param_hint=name) from exc
    configure_logging("warning", secrets=[token])  # the client's own warnings: bus gone, bus back
    roots = [os.path.abspath(path) for path in paths]
    watch_filter = WatchFilter(roots, globs=split_patterns(globs), ignores=split_patterns(ignores))
    out = click.echo
    try:
        # Connecting waits for the bus (BusUnavailable after --timeout), so "ready" means both ends are live.
        with Publisher(ingest=ingest, token=token, source=source, timeout=timeout) as publisher:

            def ready() -> None:
                out(f"watching {', '.join(roots)} → {event_type} on {publisher.address}")
                out("ready (Ctrl-C to stop)")

            emit_changes(
                roots,
                publisher=publisher,
                event_type=event_type,
                source=source,
                batch=batch,
                watch_filter=watch_filter,
                debounce_ms=debounce_ms,
                on_ready=ready,
                write=None if quiet else out,
            )
    except KeyboardInterrupt:
        # Only a second Ctrl-C gets here: the user chose not to wait for the last burst.
        raise click.exceptions.Exit(130) from None


for _command in (emit, listen, history):
    main.add_command(_command)
