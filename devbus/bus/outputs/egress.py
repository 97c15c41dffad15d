"""ZeroMQ egress: every accepted event sent to each SUB listener as ``[type, envelope]``.

The bus speaks ZMTP as the PUB side itself (see devbus/zmtp.py) rather than
through a libzmq PUB socket, whose queue per listener is bounded only in
messages (of any size): here a listener that falls behind may have at most
``listener_buffer`` bytes waiting for it; past that its events are dropped, counted in
devbus_egress_dropped_total and logged once per episode.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence

from devbus.bus.endpoints import Listening, listen
from devbus.bus.metrics import Metrics
from devbus.bus.record import Record
from devbus.frames import encode_event_frames
from devbus.zmtp import GREETING, FrameReader, Greeting, HandshakeError, check_ready, message, pong, ready

__all__ = ["Egress"]

log = logging.getLogger(__name__)

LISTENERS = frozenset({b"SUB", b"XSUB"})
HANDSHAKE_TIMEOUT = 10.0  # seconds a listener has to greet and say READY before it is closed
MAX_SUBSCRIPTION = 4096  # bytes of one subscription prefix a listener may send


class Egress:
    """A dispatcher output that sends each delivered record to every subscribed listener, never blocking the loop.

    Each record is encoded to MessagePack and framed once, whatever the number of
    listeners; while nobody listens (the usual case) records are not even encoded.
    """

    def __init__(self, *, metrics: Metrics, listener_buffer: int) -> None:
        self.listener_buffer = listener_buffer
        self._metrics = metrics
        self._listening: Listening | None = None
        self.listeners: set[_Listener] = set()
        metrics.watch(metrics.egress_listeners, lambda: sum(1 for listener in self.listeners if listener.prefixes))

    async def bind(self, endpoint: str) -> str:
        """Listen on ``endpoint`` (tcp:// or ipc://); return the address listeners should use."""
        self._listening = await listen(endpoint, lambda: _Listener(self), role="egress", option="--egress")
        return self._listening.address

    def close(self) -> None:
        """Stop accepting listeners and close the connected ones."""
        if self._listening is not None:
            self._listening.close()
        for listener in list(self.listeners):
            listener.close()

    def __call__(self, batch: Sequence[Record]) -> None:
        listeners = [listener for listener in self.listeners if listener.prefixes]
        if not listeners:
            return
        wires = []
        for record in batch:
            head, body = encode_event_frames(record.event)
            wires.append((head, message([head, body])))
        for listener in listeners:
            listener.send(wires)

    def dropped(self, count: int) -> None:
        """Count events dropped for a listener that fell behind."""
        self._metrics.egress_dropped.inc(count)


class _Listener(asyncio.Protocol):
    """One SUB connection: greeting, READY, subscriptions; events written within its byte budget."""

    def __init__(self, egress: Egress) -> None:
        self.egress = egress
        self.prefixes: set[bytes] = set()
        self.transport: asyncio.Transport | None = None
        self.reader = FrameReader(max_message=MAX_SUBSCRIPTION, max_frames=1)
        self._greeting = Greeting()
        self._ready = False
        self._dropping = 0  # events dropped in the current episode of falling behind
        self._deadline: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        transport.write(GREETING + ready(b"PUB"))
        # Tracked from the start, so that close() ends connections still in their handshake.
        self.egress.listeners.add(self)
        self._deadline = asyncio.get_running_loop().call_later(HANDSHAKE_TIMEOUT, self._too_slow)

    def connection_lost(self, exc: BaseException | None) -> None:
        self.egress.listeners.discard(self)
        self.transport = None
        if self._deadline is not None:
            self._deadline.cancel()

    def _too_slow(self) -> None:
        if not self._ready:
            log.info("closed a ZeroMQ egress connection that sent no READY within %g s", HANDSHAKE_TIMEOUT)
            self.close()

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()

    def send(self, wires: list[tuple[bytes, bytes]]) -> None:
        """Write the events this listener subscribed to, as far as its buffer allows."""
        transport = self.transport
        if transport is None:
            return
        room = self.egress.listener_buffer - transport.get_write_buffer_size()
        parts = []
        dropped = 0
        for head, wire in wires:
            if not any(head.startswith(prefix) for prefix in self.prefixes):
                continue
            if len(wire) > room:
                dropped += 1
                continue
            room -= len(wire)
            parts.append(wire)
        if parts:
            transport.write(b"".join(parts))
        if dropped:
            if not self._dropping:
                log.warning(
                    "a ZeroMQ listener fell %d bytes behind (its limit, --egress-buffer); dropping its events "
                    "until it catches up",
                    self.egress.listener_buffer,
                )
            self._dropping += dropped
            self.egress.dropped(dropped)
        elif self._dropping and parts:
            log.warning("a ZeroMQ listener caught up after %d events were dropped for it", self._dropping)
            self._dropping = 0

    def data_received(self, data: bytes) -> None:
        try:
            rest = self._greeting.take(data)
            if rest is None:
                return
            for item in self.reader.feed(rest):
                if isinstance(item, list):
                    self._subscription(item[0])
                elif isinstance(item, tuple):
                    self._command(*item)
        except HandshakeError as exc:
            log.info("closed a ZeroMQ egress connection: %s", exc)
            self.close()

    def _command(self, name: bytes, body: bytes) -> None:
        assert self.transport is not None
        if name == b"READY" and not self._ready:
            check_ready(body, allowed=LISTENERS, role="egress")
            self._ready = True
        elif name == b"PING":
            self.transport.write(pong(body))
        elif name == b"SUBSCRIBE":  # ZMTP 3.1 form
            self.prefixes.add(body)
        elif name == b"CANCEL":
            self.prefixes.discard(body)

    def _subscription(self, frame: bytes) -> None:
        # ZMTP 3.0: a one-frame message, 1 then the prefix to subscribe, 0 to cancel.
        if frame[:1] == b"\x01":
            self.prefixes.add(frame[1:])
        elif frame[:1] == b"\x00":
            self.prefixes.discard(frame[1:])
