"""One ZMTP 3 connection, whichever end of the bus it is: the ingest and the egress are roles on it.

The bus speaks ZMTP itself (``devbus/zmtp.py`` is the codec) so that what a peer
sends or is sent is bounded in bytes. :class:`ZmtpPeer` is everything a
connection does whatever its role:

- the greeting exchange: ours goes out whole as the connection opens; theirs is
  checked as it arrives (ZMTP 3, NULL mechanism);
- READY: the peer's socket type must be one the role accepts; ours goes out once
  theirs is read, because it depends on it (the ingest is a SUB to a PUB and a
  ROUTER to a DEALER). libzmq, and every ZMTP 3 peer, sends its READY without
  waiting for ours (``tests/test_zmtp_interop.py`` holds that);
- deadlines (``deadline.py``): greeting and READY within HANDSHAKE_TIMEOUT,
  then each message within ``message_timeout`` of its first byte, counting only
  the time the bus reads the connection;
- PING is answered with PONG (at most 16 bytes of context, as libzmq), and a
  peer silent past its PING's TTL is closed; the peer's ERROR closes the connection;
- refusals: a peer refused at READY, for its mechanism or for breaking the
  protocol after its greeting is sent an ERROR command saying why (ZMTP 3.1;
  libzmq reports it as a failed handshake) before the connection closes, and
  every refusal is counted by reason and logged through :class:`Refusals`,
  once per reason a minute. A peer that hangs up during its handshake is one
  too (``hangup``): libzmq set up for CURVE or PLAIN, or speaking ZMTP 2, sends
  its 10-byte signature, reads our greeting, and resets the connection;
- a seat in the connection budget (``connection_budget.py``): taken before the
  connection is made, given up when it closes; every read and every write
  tells the budget the peer is active, so that only a quiet one is closed as
  idle or displaced (:meth:`ZmtpPeer.expire`);
- subscriptions, for the PUB end: ZMTP 3.0 subscription messages and ZMTP 3.1
  SUBSCRIBE/CANCEL commands, both handed to the role as :meth:`on_subscribe`
  and :meth:`on_cancel`;
- one write path, :meth:`ZmtpPeer.write`, for every byte sent to the peer
  (greeting, READY, subscriptions, PONG, ERROR, acks, events), so that one flow
  control and one memory budget (``budget.py``, charged with every byte written
  or read) hold them all. While the peer's socket is backed up (``writing_paused``,
  asyncio's high-water mark) the peer is not read, whatever its role, and a PING
  then gets no PONG (what waits for the peer is traffic enough): a PING flood
  that reads nothing holds the high-water mark, not 270 MB/s. A role that writes
  on its own (events, acks) must stop or drop what can wait;
- a write error (the peer closed, EPIPE) never throws away what the peer sent
  before: what the kernel still holds is read and handed on before the
  connection is gone (asyncio would drop it).

A role subclasses :class:`ZmtpPeer`, names its socket type and the peer types it
accepts, and overrides the ``on_*`` hooks it needs.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
from typing import ClassVar

from devbus.bus.budget import MemoryBudget
from devbus.bus.connection_budget import ConnectionBudget
from devbus.bus.deadline import Deadline, Silence
from devbus.bus.refusals import Refusals
from devbus.zmtp import (
    GREETING,
    GREETING_SIZE,
    FrameReader,
    Greeting,
    HandshakeError,
    Rejected,
    check_ready,
    error,
    message,
    pong,
    ready,
)

# Refusals is re-exported: the roles count what they refuse through it.
__all__ = ["HANDSHAKE_TIMEOUT", "Item", "Refusals", "ZmtpPeer"]

log = logging.getLogger(__name__)

HANDSHAKE_TIMEOUT = 10.0  # seconds a peer has to greet and say READY before it is closed
PUBLISHERS = frozenset({b"PUB", b"XPUB"})
REST_READ = 64 * 1024  # bytes read at a time from a connection lost to a write error

# What one read brings a role, in the order it came: whole messages, and those the reader refused.
Item = list[bytes] | Rejected


class ZmtpPeer(asyncio.BufferedProtocol):
    """One connection speaking ZMTP 3 with the NULL mechanism; a role overrides the ``on_*`` hooks.

    Reads land in ``read_buffer``, which the role may share between all its
    connections: asyncio fills it and calls :meth:`buffer_updated` at once.
    """

    #: Our socket type, sent in our READY (see :meth:`socket_type_for`).
    SOCKET_TYPE: ClassVar[bytes]
    #: The peer socket types accepted in the peer's READY.
    ACCEPTS: ClassVar[frozenset[bytes]]
    #: What this end is called when a peer is told it cannot connect ("ingest", "egress").
    ROLE: ClassVar[str]

    def __init__(
        self,
        *,
        max_message: int,
        max_frames: int,
        message_timeout: float,
        read_buffer: memoryview,
        budget: MemoryBudget,
        connections: ConnectionBudget,
    ) -> None:
        self.reader = FrameReader(max_message=max_message, max_frames=max_frames)
        self.transport: asyncio.Transport | None = None
        self.ready = False  # the peer's READY was accepted
        self.peer_type = b""  # the socket type its READY announced
        self.writing_paused = False  # the peer's socket is backed up: write nothing more that can wait
        self._socket: socket.socket | None = None  # to read what is left after a write error
        self._message_timeout = message_timeout
        self._read_buffer = read_buffer
        self._greeting = Greeting()
        self._budget = budget
        self._connections = connections
        self._paused = False  # not reading the peer now
        self._held_back = False  # the role does not want the peer read now
        self._closing = False  # the bus closes the connection: it is not the peer hanging up
        self._deadline = Deadline(self._too_slow, message_timeout=message_timeout)
        self._silence = Silence(self._silent)  # the TTL of the peer's last PING
        self._takes_subscriptions = self.SOCKET_TYPE in PUBLISHERS

    # -- hooks for the role ------------------------------------------------------

    def on_connected(self) -> None:
        """The connection opened (our greeting and READY are on their way)."""

    def on_lost(self) -> None:
        """The connection closed."""

    def on_ready(self) -> None:
        """The peer's READY was accepted."""

    def on_read(self) -> None:
        """Bytes arrived (before they are parsed)."""

    def on_messages(self, items: list[Item]) -> None:
        """Whole messages of one read, and those the reader refused, in order (not called for a PUB end)."""

    def on_subscribe(self, prefix: bytes) -> None:
        """The peer subscribed to ``prefix`` (a PUB end only)."""

    def on_cancel(self, prefix: bytes) -> None:
        """The peer cancelled its subscription to ``prefix`` (a PUB end only)."""

    def on_refused(self, kind: str, text: str) -> None:
        """The connection is closed for ``kind``: a HandshakeError's reason, "hangup" (during the handshake),
        "timeout", "error" (the peer's ERROR), "displaced" or "idle" (by the connection budget)."""

    def socket_type_for(self, peer_type: bytes) -> bytes:
        """Our socket type for a peer of ``peer_type`` (one of ACCEPTS)."""
        return self.SOCKET_TYPE

    # -- writing -----------------------------------------------------------------

    def write(self, data: bytes) -> None:
        """Send ``data`` to the peer: the one path every byte sent takes, charged to the memory budget."""
        transport = self.transport
        if transport is not None and not transport.is_closing():
            transport.write(data)
            self._budget.charge(len(data))
            self._connections.touch(self)

    @property
    def kind(self) -> str:
        """What this connection is, for the memory budget: its role."""
        return self.ROLE

    @property
    def held(self) -> int:
        """Bytes held for the peer: written and not yet sent, and a message half-received."""
        return self.unsent + self.reader.buffered

    @property
    def owned(self) -> int:
        """What it holds, all its own (for the memory budget)."""
        return self.held

    def drop(self) -> None:
        """Close the connection now, throwing away what the peer has not taken (the memory budget is full)."""
        self._closing = True
        if self.transport is not None:
            self.transport.abort()

    @property
    def unsent(self) -> int:
        """Bytes written but not yet taken by the peer's socket."""
        return self.transport.get_write_buffer_size() if self.transport is not None else 0

    def subscribe(self, prefix: bytes = b"") -> None:
        """Subscribe to ``prefix`` (a SUB end; all topics by default), as a ZMTP 3.0 subscription message."""
        self.write(message([b"\x01" + prefix]))

    def close(self) -> None:
        """Close the connection (what is written still goes out first)."""
        self._closing = True
        if self.transport is not None:
            self.transport.close()

    def expire(self, kind: str, text: str) -> None:
        """Close the connection for the connection budget (``displaced``, ``idle``), counted and logged."""
        self.on_refused(kind, text)
        self.close()

    @property
    def kept_waiting(self) -> bool:
        """Whether the role does not read the peer now, for the bus's reasons (see :meth:`pause_reading`).

        Not when only the peer's socket is backed up: a peer that reads nothing the bus sends
        it (its acks, PONGs) is quiet by its own doing, and may be closed as idle or displaced.
        """
        return self._held_back

    def pause_reading(self, paused: bool) -> None:
        """Stop reading the peer (it then waits, its socket's queue full), or read it again.

        The role's say: the peer is read only while its socket also takes what is
        written (see the module docstring). A message in progress is not timed while
        the bus does not read it, nor is the silence a PING's TTL allows.
        """
        self._held_back = paused
        self._read_or_not()

    def _read_or_not(self) -> None:
        paused = self._held_back or self.writing_paused
        if self.transport is None or paused == self._paused:
            return
        self._paused = paused
        if paused:
            self.transport.pause_reading()
            if self.ready:
                self._deadline.pause()
            self._silence.pause()
        else:
            self.transport.resume_reading()
            if self.ready:
                self._deadline.resume(in_progress=self.reader.in_progress)
            self._silence.resume()

    def pause_writing(self) -> None:
        self.writing_paused = True
        self._read_or_not()

    def resume_writing(self) -> None:
        self.writing_paused = False
        self._read_or_not()

    # -- the connection ----------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        if self._closing:  # given up its seat while the transport was being made
            transport.close()
            return
        self._socket = transport.get_extra_info("socket")
        self._budget.join(self)
        self.write(GREETING)
        self.on_connected()
        self._deadline.start(HANDSHAKE_TIMEOUT)

    def connection_lost(self, exc: BaseException | None) -> None:
        self.transport = None
        self._budget.leave(self)
        self._deadline.stop()
        self._silence.stop()
        if exc is not None:
            self._read_rest()
        self._socket = None
        self._connections.release(self)
        if not self.ready and not self._closing:
            self.on_refused("hangup", self._hung_up())
        self.on_lost()

    def _hung_up(self) -> str:
        # Without a byte too: libzmq reads our greeting before it sends its own when ours is
        # there first, and a socket that cannot accept it then closes having sent nothing
        # (measured: 1 CURVE or PLAIN socket in 20). A port probe looks the same.
        taken = self._greeting.taken
        if taken < GREETING_SIZE:
            return (
                f"the peer hung up after {taken} bytes of its {GREETING_SIZE}-byte greeting: a ZeroMQ socket does "
                "so when it reads a greeting it cannot accept, e.g. one set up for CURVE or PLAIN security, or "
                "one speaking ZMTP 2 (libzmq 3.x); devbus speaks ZMTP 3 with the NULL mechanism only"
            )
        return "the peer hung up during its handshake, before its READY was accepted"

    def _read_rest(self) -> None:
        """Hand on what the peer sent before the connection failed (asyncio drops what it did not read).

        A write to a peer that closed fails with EPIPE or ECONNRESET while what it wrote
        before closing still waits in our socket; asyncio then aborts the transport without
        reading it. The socket is still open while connection_lost runs (an asyncio detail:
        _SelectorTransport closes it after; tests/test_hostile_zmq.py's sender that closes
        before the bus writes catches a change): read a duplicate of it to its end.
        """
        sock = self._socket
        if sock is None:
            return
        try:
            rest = socket.socket(fileno=os.dup(sock.fileno()))
        except OSError:
            return
        with rest:
            rest.setblocking(False)
            while True:
                try:
                    data = rest.recv(REST_READ)
                except OSError:  # BlockingIOError: nothing more; anything else: nothing to read
                    return
                if not data:
                    return
                self.data_received(data)

    def _too_slow(self) -> None:
        if self.ready:
            self.on_refused(
                "timeout", f"closed a connection whose message took over {self._message_timeout:g} s (--body-timeout)"
            )
        else:
            self.on_refused("handshake", f"closed a connection that sent no READY within {HANDSHAKE_TIMEOUT:g} s")
        self.close()

    # -- reading -----------------------------------------------------------------

    def get_buffer(self, sizehint: int) -> memoryview:
        return self._read_buffer

    def buffer_updated(self, nbytes: int) -> None:
        self._budget.charge(nbytes)  # what the reader may keep of it, for a message in progress
        self.data_received(bytes(self._read_buffer[:nbytes]))

    def data_received(self, data: bytes) -> None:
        """Take bytes from the peer: its greeting, then commands and messages."""
        self._connections.touch(self)
        self.on_read()
        if self._silence.seconds:
            self._silence.heard()
        try:
            rest = self._greeting.take(data)
            if rest is None:
                return
            was_in_progress = self.reader.in_progress
            items: list[Item] = []
            finished = False
            for item in self.reader.feed(rest):
                if isinstance(item, tuple):
                    finished = True
                    if not self._command(*item):
                        return  # closed
                    continue
                if not self.ready:
                    raise HandshakeError("sent a message before READY")
                finished = finished or isinstance(item, list)
                items.append(item)
            if self._takes_subscriptions:
                for frames in items:
                    if isinstance(frames, list):
                        self._subscription(frames[0])
            elif items:
                self.on_messages(items)
            if self.ready and self.transport is not None:
                self._deadline.read(in_progress=self.reader.in_progress, new=finished or not was_in_progress)
        except HandshakeError as exc:
            self._refuse(exc)

    def _command(self, name: bytes, body: bytes) -> bool:
        """Act on one command; False once the connection is closed."""
        if name == b"READY" and not self.ready:
            self.peer_type = check_ready(body, allowed=self.ACCEPTS, role=self.ROLE)
            self.write(ready(self.socket_type_for(self.peer_type)))
            self.ready = True
            self._deadline.stop()
            self.on_ready()
        elif name == b"PING":
            if not self.writing_paused:
                self.write(pong(body))
            self._silence.ping(int.from_bytes(body[:2], "big") / 10)  # ZMTP 3.1: tenths of a second
        elif name == b"ERROR":
            reason = body[1 : 1 + body[0]] if body else b""
            self.on_refused("error", f"the peer closed the connection with ERROR {reason.decode(errors='replace')!r}")
            self.close()
            return False
        elif name in (b"SUBSCRIBE", b"CANCEL") and self._takes_subscriptions:
            if not self.ready:
                raise HandshakeError(f"sent {name.decode()} before READY")
            if name == b"SUBSCRIBE":
                self.on_subscribe(body)
            else:
                self.on_cancel(body)
        return True

    def _silent(self) -> None:
        self.on_refused(
            "timeout", f"closed a connection silent for {self._silence.seconds:g} s after a PING with that TTL"
        )
        self.close()

    def _subscription(self, frame: bytes) -> None:
        # ZMTP 3.0: a one-frame message, 1 then the prefix to subscribe, 0 to cancel.
        if frame[:1] == b"\x01":
            self.on_subscribe(frame[1:])
        elif frame[:1] == b"\x00":
            self.on_cancel(frame[1:])

    def _refuse(self, exc: HandshakeError) -> None:
        if exc.tell:
            # The peer speaks ZMTP 3: tell it why before closing (its greeting may not have
            # been accepted, for a mechanism other than NULL, but it has one of ours).
            self.write(error(str(exc)))
        self.on_refused(exc.reason, f"closed a connection: {exc}")
        self.close()
