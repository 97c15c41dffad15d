"""ZeroMQ egress: every accepted event sent to each SUB listener as ``[type, envelope]``.

The bus speaks ZMTP as the PUB side itself (``devbus.bus.zmtp_peer``) rather than
through a libzmq PUB socket, whose queue per listener is bounded only in
messages (of any size): here a listener that falls behind may have at most
``listener_buffer`` bytes waiting for it; past that its events are dropped, counted in
devbus_egress_dropped_total and logged once per episode.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from devbus.bus.endpoints import Listening, listen
from devbus.bus.metrics import Metrics
from devbus.bus.record import Record
from devbus.bus.zmtp_peer import Refusals, ZmtpPeer
from devbus.frames import encode_event_frames
from devbus.zmtp import message

__all__ = ["Egress"]

log = logging.getLogger(__name__)

LISTENERS = frozenset({b"SUB", b"XSUB"})
MAX_SUBSCRIPTION = 4096  # bytes of one subscription prefix a listener may send
READ_SIZE = 16 * 1024  # bytes read from a listener at a time (subscriptions are small)


class Egress:
    """A dispatcher output that sends each delivered record to every subscribed listener, never blocking the loop.

    Each record is encoded to MessagePack and framed once, whatever the number of
    listeners; while nobody listens (the usual case) records are not even encoded.
    """

    def __init__(self, *, metrics: Metrics, listener_buffer: int, message_timeout: float) -> None:
        self.listener_buffer = listener_buffer
        self._message_timeout = message_timeout
        self._metrics = metrics
        self._listening: Listening | None = None
        self._read_buffer = memoryview(bytearray(READ_SIZE))  # shared by every listener's reads
        self.refused = Refusals(metrics, what="a ZeroMQ egress connection")
        self.listeners: set[_Listener] = set()
        metrics.watch(metrics.egress_listeners, lambda: sum(1 for listener in self.listeners if listener.prefixes))

    async def bind(self, endpoint: str) -> str:
        """Listen on ``endpoint`` (tcp:// or ipc://); return the address listeners should use."""
        self._listening = await listen(endpoint, self._listener, role="egress", option="--egress")
        return self._listening.address

    def _listener(self) -> _Listener:
        return _Listener(self, message_timeout=self._message_timeout, read_buffer=self._read_buffer)

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


class _Listener(ZmtpPeer):
    """One SUB connection: its subscriptions, and events written within its byte budget."""

    SOCKET_TYPE = b"PUB"
    ACCEPTS = LISTENERS
    ROLE = "egress"

    def __init__(self, egress: Egress, *, message_timeout: float, read_buffer: memoryview) -> None:
        super().__init__(
            max_message=MAX_SUBSCRIPTION, max_frames=1, message_timeout=message_timeout, read_buffer=read_buffer
        )
        self.egress = egress
        self.prefixes: set[bytes] = set()
        self._dropping = 0  # events dropped in the current episode of falling behind

    def on_connected(self) -> None:
        # Tracked from the start, so that close() ends connections still in their handshake.
        self.egress.listeners.add(self)

    def on_lost(self) -> None:
        self.egress.listeners.discard(self)

    def on_subscribe(self, prefix: bytes) -> None:
        self.prefixes.add(prefix)

    def on_cancel(self, prefix: bytes) -> None:
        self.prefixes.discard(prefix)

    def on_refused(self, kind: str, text: str) -> None:
        # The same reasons as the ingest's: what was refused, not where.
        self.egress.refused(f"zmq_{kind}", text)

    def send(self, wires: list[tuple[bytes, bytes]]) -> None:
        """Write the events this listener subscribed to, as far as its buffer allows."""
        if self.transport is None:
            return
        room = self.egress.listener_buffer - self.unsent
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
            self.write(b"".join(parts))
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
