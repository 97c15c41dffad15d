"""Accepting connections on a listening socket: in bursts, each decided at once, quietly when out of descriptors.

asyncio's own accept loop accepts until the process runs out of descriptors, then
logs an error with a traceback and waits a second, per listener, for as long as
that lasts: a flood of ZeroMQ peers under ``ulimit -n 256`` wrote 4.5 million log
lines in a minute. The :class:`Acceptor` accepts at most ACCEPT_BURST connections
per wake-up (so that a storm cannot starve the loop), hands each to ``take``,
which seats it in the connection budget or refuses it before anything else
happens, and when accept() fails for want of descriptors logs once and waits
ACCEPT_RETRY. HTTP (``connections.py``) and the ZeroMQ endpoints (``endpoints.py``)
both accept through it.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import Callable
from typing import Any

__all__ = ["ACCEPT_BURST", "ACCEPT_RETRY", "Acceptor", "listening_socket"]

log = logging.getLogger(__name__)

ACCEPT_BURST = 64  # connections accepted per wake-up
ACCEPT_RETRY = 0.1  # seconds to wait when the process is out of descriptors


def listening_socket(family: int, where: Any, *, backlog: int) -> socket.socket:
    """A non-blocking socket of ``family`` bound to ``where`` (an address from getaddrinfo, or a path), listening."""
    listener = socket.socket(family, socket.SOCK_STREAM)
    try:
        if family != socket.AF_UNIX:
            listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:
            listener.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)  # as asyncio's create_server does
        listener.bind(where)
        listener.listen(backlog)
        listener.setblocking(False)
    except OSError:
        listener.close()
        raise
    return listener


class Acceptor:
    """Accept on ``listener`` while started, handing each new connection to ``take`` (which owns it then)."""

    def __init__(self, listener: socket.socket, take: Callable[[socket.socket], None], *, what: str) -> None:
        self.listener = listener
        self._take = take
        self._what = what
        self._paused = False  # out of descriptors: logged once until an accept succeeds again
        self._retry: asyncio.TimerHandle | None = None

    def start(self) -> None:
        """Accept on the running loop."""
        asyncio.get_running_loop().add_reader(self.listener.fileno(), self._accept)

    def stop(self) -> None:
        """Accept no more (the listening socket stays open: its owner closes it)."""
        if self._retry is not None:
            self._retry.cancel()
            self._retry = None
        if self.listener.fileno() != -1:
            asyncio.get_running_loop().remove_reader(self.listener.fileno())

    def _accept(self) -> None:
        for _ in range(ACCEPT_BURST):
            try:
                conn, _ = self.listener.accept()
            except (BlockingIOError, InterruptedError, ConnectionAbortedError):
                return
            except OSError as exc:
                # Out of descriptors all the same (files, other connections): wait a moment.
                self._pause(exc)
                return
            self._paused = False
            self._take(conn)

    def _pause(self, exc: OSError) -> None:
        if not self._paused:
            log.warning(
                "cannot accept %s connections (%s); retrying every %.1f s", self._what, exc.strerror, ACCEPT_RETRY
            )
        self._paused = True
        loop = asyncio.get_running_loop()
        loop.remove_reader(self.listener.fileno())
        self._retry = loop.call_later(ACCEPT_RETRY, self._resume)

    def _resume(self) -> None:
        self._retry = None
        if self.listener.fileno() != -1:
            self.start()
