"""One connection budget for the whole bus: HTTP and ZeroMQ connections take seats in it, below the open-file limit.

Every connection holds a file descriptor. At the process's limit accept() fails,
the kernel's queue fills and the bus is unreachable, /health included (20,000
ZeroMQ peers that finished their handshake did that while only HTTP was
counted). So every connection the bus accepts takes a seat in one budget,
``--max-connections`` (by default the open-file limit less FD_RESERVE):

- HTTP may take every seat; ZeroMQ peers never take the last HTTP_ROOM, so that
  /health, the dashboard and a publisher over HTTP can always connect;
- at the cap, a new connection displaces the quietest ZeroMQ peer if that one
  has sent nothing and been sent nothing for DISPLACE_QUIET (an HTTP connection
  first displaces one that has not sent a request yet, see ``connections.py``),
  so that a pile of forgotten sockets cannot lock a new publisher out; else it
  is refused at once (HTTP 503 through :meth:`ConnectionBudget.turn_away`; ZeroMQ
  closed without a word, see ``endpoints.py``);
- a ZeroMQ peer that sends nothing (events, PINGs, subscriptions) and is sent
  nothing for ``idle_timeout`` (``--zmq-idle-timeout``) is closed. One the bus
  does not read meanwhile (it waits for the store, or for subscribers) is not
  idle: its quiet is the bus's doing.

A refused HTTP connection is given REFUSAL_GRACE to read its 503, at most
REFUSING of them at a time (the rest are closed at once), so refusals cost a
bounded number of descriptors too, within FD_RESERVE.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import resource
import socket
import time
from collections import OrderedDict
from typing import Any, Protocol

from devbus.bus.metrics import Metrics

__all__ = [
    "DISPLACE_QUIET",
    "FD_RESERVE",
    "HTTP_ROOM",
    "ConnectionBudget",
    "Seated",
    "connection_limit",
]

log = logging.getLogger(__name__)

# Descriptors kept back from connections (measured: 10 for a bus with the memory store):
# stdio, the event loop's, the listening sockets, the store (SQLite's three files, or
# up to 32 Redis connections), forward targets, and the refused connections below.
FD_RESERVE = 64
HTTP_ROOM = 16  # seats ZeroMQ peers never take: /health and a few HTTP clients always get in
DISPLACE_QUIET = 1.0  # seconds a ZeroMQ peer must have been quiet before a newcomer may displace it
DISPLACE_SCAN = 64  # peers looked at for one displacement (those the bus holds are skipped)
REFUSAL_GRACE = 0.5  # seconds a refused HTTP peer has to read its 503
REFUSING = 16  # refused connections held open for their grace at a time
MIN_SWEEP = 0.05  # seconds between two looks for idle peers, at the shortest
MAX_SWEEP = 10.0  # and at the longest (an idle peer is closed at most this late)


def connection_limit(wanted: int | None = None) -> int:
    """The seats the open-file limit allows (its soft value less FD_RESERVE), or ``wanted`` if fewer."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    allowed = max(soft - FD_RESERVE, 16) if soft != resource.RLIM_INFINITY else 1 << 20
    if wanted is None:
        return allowed
    if wanted > allowed:
        log.warning(
            "--max-connections %d is more than the open-file limit allows (%d, less %d kept for the bus itself); "
            "holding at most %d (raise `ulimit -n` for more)",
            wanted,
            soft,
            FD_RESERVE,
            allowed,
        )
        return allowed
    return wanted


class Seated(Protocol):
    """What the budget needs of a ZeroMQ connection."""

    @property
    def kept_waiting(self) -> bool:
        """Whether the bus does not read it now, for its own reasons (it is then not idle)."""

    def expire(self, kind: str, text: str) -> None:
        """Close it, counted and logged as ``kind`` (``displaced``, ``idle``) with ``text``."""


class ConnectionBudget:
    """The seats of HTTP connections and ZeroMQ peers, and the ZeroMQ peers from quietest to busiest.

    ZeroMQ peers are kept in an ordered dict by the time they were last active (a
    read from them, a write to them): the quietest first, so finding who is idle
    or who to displace looks at the front only.
    """

    def __init__(self, limit: int, *, idle_timeout: float, metrics: Metrics) -> None:
        self.limit = limit
        self.idle_timeout = idle_timeout
        self.http = 0
        self._zmq_limit = limit - min(HTTP_ROOM, limit // 4)
        self._peers: OrderedDict[Seated, float] = OrderedDict()
        self._full = False  # logged once per episode of being full
        self._refusing = 0
        self._sweep_every = min(max(idle_timeout / 4, MIN_SWEEP), MAX_SWEEP)
        self._sweeper: asyncio.TimerHandle | None = None
        metrics.connection_limit.set(limit)
        metrics.watch(metrics.connections.labels("http"), lambda: self.http)
        metrics.watch(metrics.connections.labels("zmq"), lambda: len(self._peers))

    @property
    def used(self) -> int:
        """Seats taken, HTTP and ZeroMQ."""
        return self.http + len(self._peers)

    def status(self) -> dict[str, Any]:
        """What health reports."""
        zmq = len(self._peers)
        return {"limit": self.limit, "http": self.http, "zmq": zmq, "zmq_idle_timeout_s": self.idle_timeout}

    # -- HTTP --------------------------------------------------------------------

    def take_http(self) -> bool:
        """Take a seat for an HTTP connection, if one is free."""
        if self.used >= self.limit:
            self._note_full("HTTP")
            return False
        self.http += 1
        return True

    def release_http(self) -> None:
        """An HTTP connection closed."""
        self.http -= 1
        self._note_released()

    # -- ZeroMQ ------------------------------------------------------------------

    def seat(self, peer: Seated) -> bool:
        """Take a seat for a new ZeroMQ ``peer``, displacing a quiet one if none is free."""
        if self.used >= self._zmq_limit and not self.displace():
            self._note_full("ZeroMQ")
            return False
        self._peers[peer] = time.monotonic()
        if self._sweeper is None:
            self._sweeper = asyncio.get_running_loop().call_later(self._sweep_every, self._sweep)
        return True

    def touch(self, peer: Seated) -> None:
        """``peer`` sent something or was sent something: it is the busiest now."""
        peers = self._peers
        if peer in peers:
            peers[peer] = time.monotonic()
            peers.move_to_end(peer)

    def release(self, peer: Seated) -> None:
        """``peer``'s connection closed (again is fine)."""
        if self._peers.pop(peer, None) is not None:
            self._note_released()
            if not self._peers and self._sweeper is not None:
                self._sweeper.cancel()
                self._sweeper = None

    def displace(self) -> bool:
        """Close the quietest ZeroMQ peer to free its seat, if it has been quiet for DISPLACE_QUIET."""
        peers = self._peers
        now = time.monotonic()
        for _ in range(min(DISPLACE_SCAN, len(peers))):
            peer, since = next(iter(peers.items()))
            if now - since < DISPLACE_QUIET:
                return False
            if peer.kept_waiting:
                self.touch(peer)
                continue
            del peers[peer]
            peer.expire(
                "displaced",
                f"closed a connection quiet for {now - since:.0f} s to seat a new one: the bus holds "
                f"{self.limit} connections (--max-connections)",
            )
            return True
        return False

    def close(self) -> None:
        """Stop looking for idle peers (the bus is stopping)."""
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None

    def _sweep(self) -> None:
        peers = self._peers
        now = time.monotonic()
        while peers:
            peer, since = next(iter(peers.items()))
            if now - since < self.idle_timeout:
                break
            if peer.kept_waiting:
                self.touch(peer)
                continue
            del peers[peer]
            peer.expire(
                "idle",
                f"closed a connection that sent nothing and was sent nothing for {self.idle_timeout:g} s "
                "(--zmq-idle-timeout; ZMQ_HEARTBEAT_IVL keeps a quiet socket open)",
            )
        self._note_released()
        self._sweeper = asyncio.get_running_loop().call_later(self._sweep_every, self._sweep) if peers else None

    # -- refusing ----------------------------------------------------------------

    def turn_away(self, conn: socket.socket, farewell: bytes) -> None:
        """Send ``farewell`` (why it is refused) on a connection given no seat, then close it."""
        with contextlib.suppress(OSError):
            conn.setblocking(False)
            conn.send(farewell)
            conn.shutdown(socket.SHUT_WR)
        if self._refusing >= REFUSING:
            conn.close()  # a storm: no time for the peer to read why
            return
        # Closing with the peer's bytes unread would reset the connection, and the peer
        # might lose the refusal it has not read yet: give it a moment.
        self._refusing += 1
        asyncio.get_running_loop().call_later(REFUSAL_GRACE, self._refused, conn)

    def _refused(self, conn: socket.socket) -> None:
        self._refusing -= 1
        conn.close()

    def _note_full(self, kind: str) -> None:
        if not self._full:  # once until it is below 90% again
            self._full = True
            log.warning(
                "no seat for a new %s connection: %d open (%d HTTP, %d ZeroMQ; --max-connections %d, of which "
                "ZeroMQ never takes the last %d); displacing connections that are quiet, refusing others",
                kind,
                self.used,
                self.http,
                len(self._peers),
                self.limit,
                self.limit - self._zmq_limit,
            )

    def _note_released(self) -> None:
        if self._full and self.used < self.limit * 9 // 10:
            self._full = False
