"""The HTTP listening socket: connections seated in the bus's connection budget, and one-line errors.

Every connection holds a file descriptor, and HTTP shares the budget with ZeroMQ
(``connection_budget.py``): a pile of idle or slow connections (a slow-loris) must
not make the bus unreachable, /health included. Past the budget, a new connection
first displaces the oldest one that has not yet sent a whole request head, then
the quietest ZeroMQ peer, else it is refused at once with a 503. Connections that
never finish their headers are closed after --header-timeout (aiohttp's keep-alive
timer, which also runs from the moment a connection opens).
"""

from __future__ import annotations

import asyncio
import functools
import logging
import resource
import socket
from collections.abc import Callable
from typing import Any

from aiohttp import web
from aiohttp.web_protocol import RequestHandler

from devbus.bus.acceptor import Acceptor, listening_socket
from devbus.bus.connection_budget import ConnectionBudget
from devbus.bus.metrics import Metrics

__all__ = ["LimitedSite", "RequestErrorLog", "raise_fd_limit"]

log = logging.getLogger(__name__)

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


class LimitedSite(web.BaseSite):
    """A TCP site whose connections take seats in the bus's connection budget.

    It accepts through an :class:`Acceptor` (asyncio's loop keeps accepting until the
    process runs out of descriptors, then stalls for a second and floods the log), and
    decides for each accepted connection whether it is served, displaces one, or is refused.

    This leans on aiohttp internals, which is why pyproject.toml keeps aiohttp below 4:
    BaseSite's ``_runner``, ``_backlog`` and ``_server`` (what its stop() closes), the
    ``_kwargs`` that aiohttp's Server hands to each RequestHandler, and a handler's
    ``_request_count``. Each place says which test fails if that changes.
    """

    __slots__ = ("_acceptor", "_budget", "_host", "_metrics", "_port", "_tasks")

    def __init__(
        self,
        runner: web.BaseRunner,
        host: str,
        port: int,
        *,
        budget: ConnectionBudget,
        backlog: int,
        metrics: Metrics,
    ) -> None:
        super().__init__(runner, backlog=backlog)
        self._host = host
        self._port = port
        self._budget = budget
        self._metrics = metrics
        self._acceptor: Acceptor | None = None
        self._tasks: set[asyncio.Task[Any]] = set()

    @property
    def name(self) -> str:
        """The site's address, as aiohttp names sites."""
        return f"http://{self._host}:{self._port}"

    async def start(self) -> None:
        """Bind, listen with the site's backlog, and accept on the running loop."""
        await super().start()
        loop = asyncio.get_running_loop()
        family, _, _, _, where = socket.getaddrinfo(
            self._host, self._port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )[0]
        listener = listening_socket(family, where, backlog=self._backlog)
        # A Server that never serves, so that aiohttp finds the socket and closes it: BaseSite.stop()
        # closes self._server (private). tests/test_run.py's
        # test_run_serves_posts_streams_and_stops_on_sigterm fails if the bus then does not stop cleanly.
        self._server = await loop.create_server(asyncio.Protocol, sock=listener, start_serving=False)
        self._acceptor = Acceptor(listener, self._take, what="HTTP")
        self._acceptor.start()

    async def stop(self) -> None:
        """Stop accepting, then close the listening sockets."""
        if self._acceptor is not None:
            self._acceptor.stop()
        await super().stop()

    def _take(self, conn: socket.socket) -> None:
        server = self._runner.server
        assert server is not None
        if not self._seat(server.connections):
            self._metrics.reject("too_many_connections")
            self._budget.turn_away(conn, REFUSAL)
            return
        loop = asyncio.get_running_loop()
        conn.setblocking(False)
        # As aiohttp's Server.__call__ makes its handlers (its _kwargs are private). Every HTTP
        # request to a `devbus run` goes through here: all of tests/test_run.py fails if that changes.
        handler = _CountedHandler(server, self._budget.release_http, loop=loop, **server._kwargs)
        task = loop.create_task(loop.connect_accepted_socket(functools.partial(_same, handler), conn))
        self._tasks.add(task)
        task.add_done_callback(functools.partial(self._started, handler))

    def _seat(self, connections: list[RequestHandler]) -> bool:
        """Take a seat in the budget: a free one, else one a quiet connection gives up."""
        budget = self._budget
        if budget.take_http():
            return True
        return (self._displace(connections) or budget.displace()) and budget.take_http()

    def _started(self, handler: _CountedHandler, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            handler.release()  # the peer was gone before its transport was made

    def _displace(self, connections: list[RequestHandler]) -> bool:
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
