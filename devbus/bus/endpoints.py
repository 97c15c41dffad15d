"""Listen on a ZeroMQ-style endpoint (tcp://HOST:PORT or ipc://PATH), each connection seated in the budget.

Connections are accepted through an :class:`~devbus.bus.acceptor.Acceptor` and
each takes a seat in the bus's connection budget (``connection_budget.py``) before
its protocol sees a byte; one given no seat is counted and logged as
``zmq_connections`` and closed at once, without a word: libzmq reconnects after a
closed connection (with its reconnect interval), but takes an ERROR command as a
protocol error and never connects that socket again (its session_base_t
terminates), and a devbus Publisher refused once would then deliver nothing.
(tests/test_connection_budget.py's publisher after a flood catches a change.)

An ipc:// endpoint is a socket file: one that a live process serves is refused
(binding over it would silently take its senders away), one that a dead bus
left behind is removed first, and the file is removed again on close.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import stat
from collections.abc import Callable
from contextlib import suppress
from typing import Any
from urllib.parse import urlsplit

from devbus.bus.acceptor import Acceptor, listening_socket
from devbus.bus.connection_budget import ConnectionBudget, Seated
from devbus.bus.zmtp_peer import ZmtpPeer
from devbus.errors import ConfigError

__all__ = ["BACKLOG", "Listening", "listen"]

log = logging.getLogger(__name__)

BACKLOG = 128  # connections the kernel queues for accept() (capped by net.core.somaxconn)


class Listening:
    """A bound endpoint: its listening sockets, the address to connect to, and any socket file."""

    def __init__(self, address: str, socket_file: tuple[str, int] | None = None) -> None:
        self.address = address
        self.acceptors: list[Acceptor] = []
        self._socket_file = socket_file  # (path, inode): removed only while it is still ours
        self._starting: set[asyncio.Task[Any]] = set()  # connections whose transport is being made

    def close(self) -> None:
        """Stop accepting connections and remove the socket file, if any."""
        for acceptor in self.acceptors:
            acceptor.stop()
            acceptor.listener.close()
        if self._socket_file is not None:
            path, inode = self._socket_file
            with suppress(OSError):
                if os.stat(path).st_ino == inode:
                    os.unlink(path)

    def serve(
        self,
        listeners: list[socket.socket],
        factory: Callable[[], ZmtpPeer],
        *,
        connections: ConnectionBudget,
        refused: Callable[[str, str], None],
        what: str,
    ) -> None:
        """Accept on ``listeners``: each connection seated in ``connections`` and served by a new ``factory()``."""
        loop = asyncio.get_running_loop()

        def take(conn: socket.socket) -> None:
            peer = factory()
            if not connections.seat(peer):
                refused(
                    "zmq_connections",
                    f"refused a connection: no seat left of {connections.limit} (--max-connections), "
                    "and no ZeroMQ peer quiet enough to give one up",
                )
                conn.close()
                return
            conn.setblocking(False)
            task = loop.create_task(loop.connect_accepted_socket(lambda: peer, conn))
            self._starting.add(task)
            task.add_done_callback(lambda done: self._started(done, peer, connections))

        for listener in listeners:
            acceptor = Acceptor(listener, take, what=what)
            acceptor.start()
            self.acceptors.append(acceptor)

    def _started(self, task: asyncio.Task[Any], peer: Seated, connections: ConnectionBudget) -> None:
        self._starting.discard(task)
        if task.cancelled() or task.exception() is not None:
            connections.release(peer)  # the peer was gone before its transport was made


async def listen(
    endpoint: str,
    factory: Callable[[], ZmtpPeer],
    *,
    role: str,
    option: str,
    connections: ConnectionBudget,
    refused: Callable[[str, str], None],
) -> Listening:
    """Bind ``endpoint`` for the ZeroMQ ``role`` (ingest, egress); ConfigError names ``option``.

    ``refused`` counts and logs a connection given no seat (reason, text).
    """
    parts = urlsplit(endpoint)
    try:
        if parts.scheme == "tcp":
            host, _, port = parts.netloc.rpartition(":")
            host = host.strip("[]")
            listeners = _bind_tcp("0.0.0.0" if host == "*" else host, 0 if port == "*" else int(port))
            bound = listeners[0].getsockname()
            listening = Listening(f"tcp://{f'[{bound[0]}]' if ':' in bound[0] else bound[0]}:{bound[1]}")
        elif parts.scheme == "ipc":
            path = endpoint.removeprefix("ipc://")
            _claim_socket_file(path, option)
            listeners = [listening_socket(socket.AF_UNIX, path, backlog=BACKLOG)]
            listening = Listening(endpoint, (path, os.stat(path).st_ino))
        else:
            raise ConfigError(f"{option} {endpoint!r}: the bus listens on tcp://HOST:PORT or ipc://PATH")
    except (OSError, ValueError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else exc
        raise ConfigError(f"Cannot bind the ZeroMQ {role} to {endpoint}: {reason}; pass another {option}") from exc
    listening.serve(listeners, factory, connections=connections, refused=refused, what=f"ZeroMQ {role}")
    return listening


def _bind_tcp(host: str, port: int) -> list[socket.socket]:
    """Listening sockets on every address ``host`` resolves to (as asyncio's create_server binds them)."""
    found = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    listeners: list[socket.socket] = []
    try:
        for family, _, _, _, where in dict.fromkeys(found):
            listeners.append(listening_socket(family, where, backlog=BACKLOG))
    except OSError:
        for listener in listeners:
            listener.close()
        raise
    return listeners


def _claim_socket_file(path: str, option: str) -> None:
    """Refuse a socket file another live process serves; remove one a dead bus left behind."""
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(mode):
        raise ConfigError(f"{option} ipc://{path}: that path exists and is not a socket; choose another path")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.settimeout(1.0)
        probe.connect(path)
    except ConnectionRefusedError:
        os.unlink(path)  # nobody listens: left by a bus that died
        log.info("removed the stale socket file %s", path)
        return
    except OSError:
        return  # bind will say what is wrong
    finally:
        probe.close()
    raise ConfigError(
        f"Another process (a running devbus?) already serves ipc://{path}; stop it or pass another {option}"
    )
