"""Serve a bus until SIGINT or SIGTERM: sites, access log, banner, per-event output, clean stop."""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import ctypes.util
import gc
import logging
import signal
import sys
from collections.abc import Callable
from urllib.parse import urlsplit

from aiohttp import web
from aiohttp.abc import AbstractAccessLogger

from devbus.bus.allowlists import check_allowlists, is_loopback_host
from devbus.bus.app import create_app
from devbus.bus.connections import LimitedSite, RequestErrorLog, raise_fd_limit
from devbus.bus.keys import CONNECTIONS, DISPATCHER, ENDPOINTS, FANOUT, METRICS
from devbus.bus.outputs.console import EventPrinter
from devbus.bus.outputs.forward import parse_target
from devbus.bus.preflight import check_addresses_free, check_options
from devbus.bus.settings import Settings
from devbus.errors import ConfigError
from devbus.logs import REDACTED
from devbus.text import plural
from devbus.version import __version__

__all__ = ["check_exposure", "serve"]

log = logging.getLogger(__name__)

SHUTDOWN_TIMEOUT = 1.0


def redacted_path(request: web.BaseRequest) -> str:
    """The path and query of ``request`` with any ?token= value hidden."""
    url = request.rel_url
    if "token" in url.query:
        url = url.update_query(token=REDACTED)
    return str(url)


class AccessLogger(AbstractAccessLogger):
    """Log one debug line per request; never headers, never a token."""

    def log(self, request: web.BaseRequest, response: web.StreamResponse, time: float) -> None:
        """Write the access line for one finished request."""
        self.logger.debug(
            "%s %s %s -> %d (%.1f ms)",
            request.remote,
            request.method,
            redacted_path(request),
            response.status,
            time * 1000,
        )

    @property
    def enabled(self) -> bool:
        """Only pay for access logging when debug output is on."""
        return self.logger.isEnabledFor(logging.DEBUG)


def _zmq_is_local(endpoint: str) -> bool:
    """Whether a ZeroMQ endpoint is reachable from this machine only."""
    parts = urlsplit(endpoint)
    if parts.scheme in ("ipc", "inproc"):
        return True
    if parts.scheme not in ("tcp", "ws"):
        return False  # pgm, epgm, udp, ...: network transports by nature
    host = parts.netloc.rsplit(":", 1)[0]
    # "tcp://src;dst" names a source interface; only the bound part matters here.
    return is_loopback_host(host.rpartition(";")[2].strip("[]"))


def check_exposure(settings: Settings) -> None:
    """Refuse to listen beyond loopback without a token (or an explicit --insecure)."""
    if settings.insecure:
        return
    # Egress is a PUB socket: anyone who can connect reads every event, and a
    # token cannot change that, so only --insecure opens it to the network.
    if settings.egress and not _zmq_is_local(settings.egress):
        raise ConfigError(
            f"Refusing to publish events beyond this machine (ZeroMQ egress on {settings.egress}): "
            "anyone who can connect would read every event, token or not; bind it to 127.0.0.1, "
            "or pass --insecure if every peer on that network is trusted"
        )
    if settings.token:
        return
    exposed = [f"HTTP on {settings.host}"] if not is_loopback_host(settings.host) else []
    if settings.ingest and not _zmq_is_local(settings.ingest):
        exposed.append(f"ZeroMQ ingest on {settings.ingest}")
    if exposed:
        raise ConfigError(
            f"Refusing to listen beyond this machine ({'; '.join(exposed)}) without a token: "
            "pass --token SECRET (or DEVBUS_TOKEN), or --insecure if every peer on that network is trusted"
        )


# Objects the young generation may gain before a collection. A batch of events
# creates thousands of short-lived objects at once (drafts, events, history
# entries); at the default of 700 the collector runs many times per batch and
# promotes them all, costing about a fifth of ingest. At this size they die first.
YOUNG_GC_THRESHOLD = 50_000

# Seconds a thread may hold the GIL while another waits for it (default 0.005).
GIL_SWITCH_INTERVAL = 0.0005


def _tune_gc() -> None:
    _, middle, old = gc.get_threshold()
    gc.set_threshold(YOUNG_GC_THRESHOLD, middle, old)
    # A store's writer thread waits for the GIL while the loop fans out; at the
    # default 5 ms switch interval that wait alone would break a 5 ms p99.
    sys.setswitchinterval(GIL_SWITCH_INTERVAL)


# glibc raises its mmap threshold to the size of each large block freed (up to 32 MiB);
# from then on, buffers up to that size come from the heap and stay in the process once
# freed. Under 500 egress listeners dropped one by one for the memory budget, the bus
# held 128 MiB for them but its RSS reached 484 MB, and 356 MB once they were gone. A
# fixed threshold (glibc's default, 128 KiB, which turns the adjustment off) gives
# each freed buffer back to the system: 231 MB, then 103 MB. -3 is M_MMAP_THRESHOLD.
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 128 * 1024


def _tune_malloc() -> None:
    if not sys.platform.startswith("linux"):
        return
    with contextlib.suppress(OSError, AttributeError):  # not glibc (musl has a mallopt that does nothing)
        ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)


# Connections the kernel queues for accept() beyond the subscriber limit: a
# storm of reconnecting pages must not overflow it (the kernel caps it at somaxconn).
BACKLOG_MARGIN = 128


def _without_secrets(target: str) -> str:
    """A forward target (``URL`` or ``NAME=URL``) as the banner shows it: no user, password or query."""
    name, url = parse_target(target)
    parts = urlsplit(url)
    host = parts.hostname or ""
    host = f"[{host}]" if ":" in host else host
    port = f":{parts.port}" if parts.port else ""
    shown = f"{parts.scheme}://{host}{port}{parts.path}" + ("?…" if parts.query else "")
    return shown if target == url else f"{name}={shown}"


def _base_url(settings: Settings, port: int) -> str:
    return f"http://{settings.host if ':' not in settings.host else f'[{settings.host}]'}:{port}"


def _banner(settings: Settings, port: int, app: web.Application) -> str:
    base = _base_url(settings, port)
    rows = [
        ("dashboard", f"{base}/"),
        ("events", f"{base}{settings.api}/events  (SSE)"),
        ("webhook", f"{base}{settings.api}/webhook  (POST JSON)"),
    ]
    for name, endpoint in app[ENDPOINTS].items():
        rows.append((name, endpoint))
    types = f"  (types: {', '.join(settings.forward_types)})" if settings.forward_types else ""
    rows += [("forward", _without_secrets(target) + types) for target in settings.forward]
    lines = [f"devbus {__version__} on {base}"]
    lines += [f"  {name:<10} {where}" for name, where in rows]
    if settings.token:
        # Say how to pass the token, never the token itself: output ends up in logs.
        lines.append(
            f"  {'token':<10} required: 'Authorization: Bearer <token>' or ?token=<token> (e.g. {base}/?token=...)"
        )
    lines.append("ready (Ctrl-C to stop)")
    return "\n".join(lines)


async def serve(settings: Settings, *, quiet: bool = False, write: Callable[[str], None] | None = None) -> None:
    """Run the bus until a stop signal, then close every stream and return."""
    out = write or (lambda line: print(line, flush=True))
    check_options(settings)
    check_exposure(settings)
    check_allowlists(settings)
    check_addresses_free(settings)
    raise_fd_limit()  # before the app is built: its connection budget is sized from the limit
    _tune_gc()
    _tune_malloc()
    app = create_app(settings)
    runner = web.AppRunner(
        app,
        access_log=logging.getLogger("devbus.access"),
        access_log_class=AccessLogger,
        handler_cancellation=True,
        shutdown_timeout=SHUTDOWN_TIMEOUT,
        # aiohttp's keep-alive timer runs from the moment a connection opens and
        # after each response, and closes it if no request head has arrived: a
        # header read timeout, and the idle timeout of a kept-alive connection.
        keepalive_timeout=settings.header_timeout,
        logger=RequestErrorLog(logging.getLogger("devbus.http"), {}),
    )
    await runner.setup()
    try:
        site = LimitedSite(
            runner,
            settings.host,
            settings.port,
            budget=app[CONNECTIONS],
            backlog=settings.max_subscribers + BACKLOG_MARGIN,
            metrics=app[METRICS],
        )
        try:
            await site.start()
        except OSError as exc:
            raise ConfigError(f"Cannot listen on {settings.host}:{settings.port}: {exc.strerror or exc}") from exc
        port = runner.addresses[0][1]
        app[DISPATCHER].store.announce(_base_url(settings, port))  # a second bus on its file names it
        # Handle signals before saying "ready": a stop sent right after must still be clean.
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, stop.set)
        if not quiet:
            # A line per event, with the subscribers the SSE fan-out reports it reached.
            app[FANOUT].report_to(EventPrinter(out))
        out(_banner(settings, port, app))
        await stop.wait()
        out("devbus stopping")
    finally:
        await runner.cleanup()
    # After cleanup, which reads what senders had already written to the ingest.
    out(f"devbus stopped after {plural(app[DISPATCHER].total, 'event')}")
    sys.stdout.flush()
