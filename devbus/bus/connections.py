"""The HTTP listening socket: a connection cap within the open-file limit, and one-line errors.

Every connection holds a file descriptor. At the process's limit accept() fails and
the kernel's queue fills, so a pile of idle or slow connections (a slow-loris) would
make the bus unreachable, /health included. The site below keeps the number of
connections under the limit: past it, a new connection first displaces the oldest
one that has not yet sent a whole request head, else it is refused at once with a
503. Connections that never finish their headers are closed after --header-timeout
(aiohttp's keep-alive timer, which also runs from the moment a connection opens).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import resource
import socket
from collections.abc import Callable
from typing import Any

from aiohttp import web
from aiohttp.web_protocol import RequestHandler

from devbus.bus.metrics import Metrics

__all__ = ["FD_RESERVE", "LimitedSite", "RequestErrorLog", "connection_limit", "raise_fd_limit"]

log = logging.getLogger(__name__)

ACCEPT_BURST = 64  # connections accepted per wake-up, so a storm cannot starve the loop
ACCEPT_RETRY = 0.1  # seconds to wait when the process is out of descriptors
REFUSAL_GRACE = 0.5  # seconds a refused peer has to read its 503
# Descriptors kept back from HTTP connections: ZeroMQ sockets and peers, log
# files, the event loop's own, and the accept that finds the bus full.
FD_RESERVE = 64
_REFUSAL_BODY = b'{"success":false,"error":"Too many connections to devbus; retry shortly"}'
REFUSAL = (
    b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\n"
    b"Content-Length: %d\r\nConnection: close\r\n\r\n%b" % (len(_REFUSAL_BODY), _REFUSAL_BODY)
)


def raise_fd_limit() -> int:
    """Raise the soft open-file limit as far as the hard limit allows; return the new soft limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    # Every SSE subscriber holds a socket; the common soft limit of 1024 would
    # cap the bus long before memory does.
    wanted = hard if hard != resource.RLIM_INFINITY else max(soft, 65536)
    if soft != wanted:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
            soft = wanted
        except (ValueError, OSError):
            log.warning("could not raise the open-file limit from %d to %d", soft, wanted)
    return soft


def connection_limit(fd_limit: int) -> int:
    """HTTP connections the bus accepts at once with ``fd_limit`` descriptors."""
    return max(fd_limit - FD_RESERVE, 16)


class LimitedSite(web.BaseSite):
    """A TCP site that accepts only as many connections as it has descriptors for.

    It runs its own accept loop (asyncio's keeps accepting until the process runs
    out of descriptors, then stalls for a second and floods the log), and decides
    for each accepted connection whether it is served, displaces one, or is refused.

    This leans on aiohttp internals, which is why pyproject.toml keeps aiohttp below 4:
    BaseSite's ``_runner``, ``_backlog`` and ``_server`` (what its stop() closes), the
    ``_kwargs`` that aiohttp's Server hands to each RequestHandler, and a handler's
    ``_request_count``. Each place says which test fails if that changes.
    """

    __slots__ = ("_full", "_host", "_limit", "_metrics", "_open", "_paused", "_port", "_refusing", "_tasks")

    def __init__(
        self, runner: web.BaseRunner, host: str, port: int, *, limit: int, backlog: int, metrics: Metrics
    ) -> None:
        super().__init__(runner, backlog=backlog)
        self._host = host
        self._port = port
        self._limit = limit
        self._metrics = metrics
        self._full = False
        self._paused = False
        self._open = 0  # connections handed to aiohttp and not yet closed
        self._refusing = 0  # refused connections waiting to be closed
        self._tasks: set[asyncio.Task[Any]] = set()

    @property
    def name(self) -> str:
        """The site's address, as aiohttp names sites."""
        return f"http://{self._host}:{self._port}"

    async def start(self) -> None:
        """Bind, listen with the site's backlog, and accept on the running loop."""
        await super().start()
        loop = asyncio.get_running_loop()
        listener = _listen(self._host, self._port, backlog=self._backlog)
        # A Server that never serves, so that aiohttp finds the socket and closes it: BaseSite.stop()
        # closes self._server (private). tests/test_run.py's
        # test_run_serves_posts_streams_and_stops_on_sigterm fails if the bus then does not stop cleanly.
        self._server = await loop.create_server(asyncio.Protocol, sock=listener, start_serving=False)
        loop.add_reader(listener.fileno(), self._accept, listener)

    async def stop(self) -> None:
        """Stop accepting, then close the listening sockets."""
        if isinstance(self._server, asyncio.Server):
            loop = asyncio.get_running_loop()
            for sock in self._server.sockets:
                loop.remove_reader(sock.fileno())
        await super().stop()

    def _accept(self, listener: socket.socket) -> None:
        server = self._runner.server
        assert server is not None
        loop = asyncio.get_running_loop()
        for _ in range(ACCEPT_BURST):
            try:
                conn, _ = listener.accept()
            except (BlockingIOError, InterruptedError, ConnectionAbortedError):
                return
            except OSError as exc:
                # Out of descriptors all the same (other files, ZeroMQ peers): wait a moment.
                self._pause(loop, listener, exc)
                return
            if self._open >= self._limit and not self._displace(server.connections):
                self._refuse(loop, conn)
                continue
            self._paused = False
            conn.setblocking(False)
            self._open += 1
            # As aiohttp's Server.__call__ makes its handlers (its _kwargs are private). Every HTTP
            # request to a `devbus run` goes through here: all of tests/test_run.py fails if that changes.
            handler = _CountedHandler(server, self._lost, loop=loop, **server._kwargs)
            task = loop.create_task(loop.connect_accepted_socket(functools.partial(_same, handler), conn))
            self._tasks.add(task)
            task.add_done_callback(self._started)

    def _refuse(self, loop: asyncio.AbstractEventLoop, conn: socket.socket) -> None:
        self._metrics.reject("too_many_connections")
        with contextlib.suppress(OSError):
            conn.setblocking(False)
            conn.send(REFUSAL)
            conn.shutdown(socket.SHUT_WR)
        if self._refusing >= FD_RESERVE // 2:
            conn.close()  # a storm: no time for the peer to read the 503
            return
        # Closing with the request unread would reset the connection, and the peer
        # might lose the 503 it has not read yet: give it a moment.
        self._refusing += 1
        loop.call_later(REFUSAL_GRACE, self._refused, conn)

    def _refused(self, conn: socket.socket) -> None:
        self._refusing -= 1
        conn.close()

    def _started(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            self._open -= 1  # the peer was gone before its transport was made

    def _pause(self, loop: asyncio.AbstractEventLoop, listener: socket.socket, exc: OSError) -> None:
        if not self._paused:  # once until an accept succeeds again
            log.warning("cannot accept HTTP connections (%s); retrying every %.1f s", exc.strerror, ACCEPT_RETRY)
        self._paused = True
        loop.remove_reader(listener.fileno())

        def resume() -> None:
            if listener.fileno() != -1:
                loop.add_reader(listener.fileno(), self._accept, listener)

        loop.call_later(ACCEPT_RETRY, resume)

    def _lost(self) -> None:
        self._open -= 1
        if self._full and self._open < self._limit * 9 // 10:
            self._full = False

    def _displace(self, connections: list[RequestHandler]) -> bool:
        if not self._full:
            self._full = True
            log.warning(
                "%d HTTP connections open, the most this bus can hold; closing connections that "
                "have sent no request yet, refusing others with 503",
                self._open,
            )
        # aiohttp counts a request once its head is parsed (RequestHandler._request_count,
        # private): zero means the peer has not finished a request line and headers.
        # test_connection_pile_up_leaves_health_reachable fails if that changes.
        for handler in connections:  # oldest first: the dict keeps connection order
            if isinstance(handler, _CountedHandler) and handler._on_lost and handler._request_count == 0:
                handler.release()
                handler.force_close()
                self._metrics.reject("connection_displaced")
                return True
        return False


def _same(handler: RequestHandler) -> RequestHandler:
    return handler


def _listen(host: str, port: int, *, backlog: int) -> socket.socket:
    """A listening socket on the first address ``host`` resolves to."""
    family, kind, proto, _, where = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0]
    listener = socket.socket(family, kind, proto)
    try:
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(where)
        listener.listen(backlog)
        listener.setblocking(False)
    except OSError:
        listener.close()
        raise
    return listener


class _CountedHandler(RequestHandler):
    """aiohttp's handler, saying when its connection is gone."""

    __slots__ = ("_on_lost",)

    def __init__(self, manager: web.Server, on_lost: Callable[[], None], **kwargs: Any) -> None:
        super().__init__(manager, **kwargs)
        self._on_lost: Callable[[], None] | None = on_lost

    def release(self) -> None:
        """Give up the connection's place (once)."""
        if self._on_lost is not None:
            self._on_lost()
            self._on_lost = None

    def connection_lost(self, exc: BaseException | None) -> None:
        """Release the connection's place, then let aiohttp clean up."""
        self.release()
        super().connection_lost(exc)


class RequestErrorLog(logging.LoggerAdapter[logging.Logger]):
    """aiohttp's server logger, made to log a malformed request as one line.

    aiohttp logs a request it cannot parse with logger.exception, and its message
    quotes the offending bytes (which can be part of a token): the line says only
    what kind of error it was, and the traceback is kept for debug level.
    """

    def exception(self, msg: object, *args: Any, exc_info: Any = True, **kwargs: Any) -> None:
        """Log one line naming the error; the traceback only at debug level."""
        error = exc_info if isinstance(exc_info, BaseException) else None
        kind = type(error).__name__ if error is not None else "error"
        self.logger.warning("%s (%s)", str(msg) % args if args else msg, kind)
        if self.logger.isEnabledFor(logging.DEBUG):
            self.logger.debug("traceback of the %s above", kind, exc_info=exc_info)
