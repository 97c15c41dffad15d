"""One ZMTP 3 connection, whichever end of the bus it is: the ingest and the egress are roles on it.

The bus speaks ZMTP itself (``devbus/zmtp.py`` is the codec) so that what a peer
sends or is sent is bounded in bytes. :class:`ZmtpPeer` is everything a
connection does whatever its role:

- the greeting exchange: ours goes out whole with our READY as the connection
  opens; theirs is checked as it arrives (ZMTP 3, NULL mechanism);
- READY: the peer's socket type must be one the role accepts;
- deadlines: greeting and READY within HANDSHAKE_TIMEOUT, then any message in
  progress within ``message_timeout`` (a message holds up to its size limit);
- PING is answered with PONG; the peer's ERROR closes the connection;
- refusals: a peer refused at READY, for its mechanism or for breaking the
  protocol after its greeting is sent an ERROR command saying why (ZMTP 3.1;
  libzmq reports it as a failed handshake) before the connection closes, and
  every refusal is counted and logged through :class:`Refusals`;
- subscriptions, for the PUB end: ZMTP 3.0 subscription messages and ZMTP 3.1
  SUBSCRIBE/CANCEL commands, both handed to the role as :meth:`on_subscribe`
  and :meth:`on_cancel`;
- one write path, :meth:`ZmtpPeer.write`, for every byte sent to the peer
  (greeting, READY, subscriptions, PONG, ERROR, events), so that one flow control
  and one memory budget can hold them all.

A role subclasses :class:`ZmtpPeer`, names its socket type and the peer types it
accepts, and overrides the ``on_*`` hooks it needs.
"""

from __future__ import annotations

import asyncio
import logging
from typing import ClassVar

from devbus.bus.metrics import Metrics
from devbus.zmtp import (
    GREETING,
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

__all__ = ["HANDSHAKE_TIMEOUT", "Refusals", "ZmtpPeer"]

log = logging.getLogger(__name__)

HANDSHAKE_TIMEOUT = 10.0  # seconds a peer has to greet and say READY before it is closed
PUBLISHERS = frozenset({b"PUB", b"XPUB"})


class Refusals:
    """Refusals of one listener (messages or connections): each counted by reason, the first of each logged."""

    def __init__(self, metrics: Metrics, *, what: str) -> None:
        self._metrics = metrics
        self._what = what
        self._logged: set[str] = set()

    def __call__(self, reason: str, text: str) -> None:
        """Count one refusal for ``reason`` (a metrics label); log it if it is the first of its kind."""
        self._metrics.reject(reason)
        if reason not in self._logged:
            self._logged.add(reason)
            log.warning("refused %s (%s): %s; further ones are only counted", self._what, reason, text)
        else:
            log.debug("refused %s (%s): %s", self._what, reason, text)


class ZmtpPeer(asyncio.BufferedProtocol):
    """One connection speaking ZMTP 3 with the NULL mechanism; a role overrides the ``on_*`` hooks.

    Reads land in ``read_buffer``, which the role may share between all its
    connections: asyncio fills it and calls :meth:`buffer_updated` at once.
    """

    #: Our socket type, sent in our READY.
    SOCKET_TYPE: ClassVar[bytes]
    #: The peer socket types accepted in the peer's READY.
    ACCEPTS: ClassVar[frozenset[bytes]]
    #: What this end is called when a peer is told it cannot connect ("ingest", "egress").
    ROLE: ClassVar[str]

    def __init__(self, *, max_message: int, max_frames: int, message_timeout: float, read_buffer: memoryview) -> None:
        self.reader = FrameReader(max_message=max_message, max_frames=max_frames)
        self.transport: asyncio.Transport | None = None
        self.ready = False  # the peer's READY was accepted
        self._message_timeout = message_timeout
        self._read_buffer = read_buffer
        self._greeting = Greeting()
        self._paused = False
        self._deadline: asyncio.TimerHandle | None = None  # for the handshake, then for a message in progress
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

    def on_messages(self, messages: list[list[bytes]], rejected: list[Rejected]) -> None:
        """Whole messages of one read, and those the reader refused (not called for a PUB end)."""

    def on_subscribe(self, prefix: bytes) -> None:
        """The peer subscribed to ``prefix`` (a PUB end only)."""

    def on_cancel(self, prefix: bytes) -> None:
        """The peer cancelled its subscription to ``prefix`` (a PUB end only)."""

    def on_refused(self, kind: str, text: str) -> None:
        """The connection is closed for ``kind`` ("handshake", "timeout" or "error", the peer's ERROR)."""

    # -- writing -----------------------------------------------------------------

    def write(self, data: bytes) -> None:
        """Send ``data`` to the peer: the one path every byte sent takes."""
        transport = self.transport
        if transport is not None and not transport.is_closing():
            transport.write(data)

    @property
    def unsent(self) -> int:
        """Bytes written but not yet taken by the peer's socket."""
        return self.transport.get_write_buffer_size() if self.transport is not None else 0

    def subscribe(self, prefix: bytes = b"") -> None:
        """Subscribe to ``prefix`` (a SUB end; all topics by default), as a ZMTP 3.0 subscription message."""
        self.write(message([b"\x01" + prefix]))

    def close(self) -> None:
        """Close the connection (what is written still goes out first)."""
        if self.transport is not None:
            self.transport.close()

    def pause_reading(self, paused: bool) -> None:
        """Stop reading the peer (it then waits, its socket's queue full), or read it again."""
        if self.transport is None or paused == self._paused:
            return
        self._paused = paused
        if paused:
            self.transport.pause_reading()
        else:
            self.transport.resume_reading()

    # -- the connection ----------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self.write(GREETING + ready(self.SOCKET_TYPE))
        self.on_connected()
        self._deadline = asyncio.get_running_loop().call_later(HANDSHAKE_TIMEOUT, self._too_slow)

    def connection_lost(self, exc: BaseException | None) -> None:
        self.transport = None
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None
        self.on_lost()

    def _too_slow(self) -> None:
        if self.ready:
            self.on_refused(
                "timeout", f"closed a connection whose message took over {self._message_timeout:g} s (--body-timeout)"
            )
        else:
            self.on_refused("handshake", f"closed a connection that sent no READY within {HANDSHAKE_TIMEOUT:g} s")
        self.close()

    def _time_message(self) -> None:
        # A message in progress holds up to its size limit: it must finish in bounded time.
        if not self.ready:
            return
        if not self.reader.in_progress:
            if self._deadline is not None:
                self._deadline.cancel()
                self._deadline = None
        elif self._deadline is None:
            self._deadline = asyncio.get_running_loop().call_later(self._message_timeout, self._too_slow)

    # -- reading -----------------------------------------------------------------

    def get_buffer(self, sizehint: int) -> memoryview:
        return self._read_buffer

    def buffer_updated(self, nbytes: int) -> None:
        self.data_received(bytes(self._read_buffer[:nbytes]))

    def data_received(self, data: bytes) -> None:
        """Take bytes from the peer: its greeting, then commands and messages."""
        self.on_read()
        try:
            rest = self._greeting.take(data)
            if rest is None:
                return
            messages: list[list[bytes]] = []
            rejected: list[Rejected] = []
            for item in self.reader.feed(rest):
                if isinstance(item, list):
                    messages.append(item)
                elif isinstance(item, Rejected):
                    rejected.append(item)
                elif not self._command(*item):
                    return  # closed
            if messages and not self.ready:
                raise HandshakeError("sent a message before READY")
            if self._takes_subscriptions:
                for frames in messages:
                    self._subscription(frames[0])
            elif messages or rejected:
                self.on_messages(messages, rejected)
            self._time_message()
        except HandshakeError as exc:
            self._refuse(exc)

    def _command(self, name: bytes, body: bytes) -> bool:
        """Act on one command; False once the connection is closed."""
        if name == b"READY" and not self.ready:
            check_ready(body, allowed=self.ACCEPTS, role=self.ROLE)
            self.ready = True
            if self._deadline is not None:
                self._deadline.cancel()
                self._deadline = None
            self.on_ready()
        elif name == b"PING":
            self.write(pong(body))
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
        self.on_refused("handshake", f"closed a connection: {exc}")
        self.close()
