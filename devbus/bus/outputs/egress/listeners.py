"""ZeroMQ egress: every accepted event sent to each SUB listener as ``[type, envelope]``.

The bus speaks ZMTP as the PUB side itself (``devbus.bus.zmtp_peer``) rather than
through a libzmq PUB socket, whose queue per listener is bounded only in
messages (of any size): here a listener that falls behind may have at most
``listener_buffer`` bytes waiting for it; past that its events are dropped, counted in
devbus_egress_dropped_total and logged once per episode. What all listeners hold
together, their subscriptions included, is charged to the bus's memory budget.

Which listeners an event type goes to is worked out once per type and kept until
a subscription changes (as the SSE fan-out keeps its filters' matches), and each
listener matches a type at a cost its number of subscriptions does not set
(``subscriptions.py``): 100,000 subscriptions cut the ingest from 46,011 to 601
events/s when each event was compared with every one of them.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from devbus.bus.budget import MemoryBudget
from devbus.bus.connection_budget import ConnectionBudget
from devbus.bus.endpoints import Listening, listen
from devbus.bus.metrics import Metrics
from devbus.bus.outputs.egress.subscriptions import ENTRY_COST, Subscriptions, TooManySubscriptions
from devbus.bus.record import Record
from devbus.bus.zmtp_peer import Refusals, ZmtpPeer
from devbus.frames import encode_event_frames
from devbus.zmtp import message

__all__ = ["Egress"]

log = logging.getLogger(__name__)

LISTENERS = frozenset({b"SUB", b"XSUB"})
MAX_SUBSCRIPTION = 4096  # bytes of one subscription prefix a listener may send
READ_SIZE = 16 * 1024  # bytes read from a listener at a time (subscriptions are small)
# Event types whose listeners are kept. Types are few, but senders choose them: past
# this many the cache starts over rather than grow (as the SSE fan-out's does).
MAX_CACHED_TYPES = 1024


class Egress:
    """A dispatcher output that sends each delivered record to every subscribed listener, never blocking the loop.

    Each record is encoded to MessagePack and framed once, whatever the number of
    listeners; a record nobody subscribed to (while nobody listens, every one) is not
    even encoded.
    """

    def __init__(
        self,
        *,
        metrics: Metrics,
        budget: MemoryBudget,
        connections: ConnectionBudget,
        listener_buffer: int,
        message_timeout: float,
    ) -> None:
        self.listener_buffer = listener_buffer
        self.budget = budget
        self._connections = connections
        self._message_timeout = message_timeout
        self._metrics = metrics
        self._listening: Listening | None = None
        self._read_buffer = memoryview(bytearray(READ_SIZE))  # shared by every listener's reads
        self.refused = Refusals(metrics, what="a ZeroMQ egress connection")
        self.refused_subscription = Refusals(metrics, what="a ZeroMQ egress subscription")
        self.listeners: set[_Listener] = set()
        self._by_type: dict[str, list[_Listener]] = {}  # event type -> the listeners it goes to
        metrics.watch(metrics.egress_listeners, lambda: sum(1 for listener in self.listeners if listener.subscriptions))

    async def bind(self, endpoint: str) -> str:
        """Listen on ``endpoint`` (tcp:// or ipc://); return the address listeners should use."""
        self._listening = await listen(
            endpoint,
            self._listener,
            role="egress",
            option="--egress",
            connections=self._connections,
            refused=self.refused,
        )
        return self._listening.address

    def _listener(self) -> _Listener:
        return _Listener(
            self, message_timeout=self._message_timeout, read_buffer=self._read_buffer, connections=self._connections
        )

    def changed(self) -> None:
        """A listener's subscriptions changed, or it left: match each type again."""
        self._by_type.clear()

    def close(self) -> None:
        """Stop accepting listeners and close the connected ones."""
        if self._listening is not None:
            self._listening.close()
        for listener in list(self.listeners):
            listener.close()

    def _matching(self, event_type: str) -> list[_Listener]:
        listeners = self._by_type.get(event_type)
        if listeners is None:
            if len(self._by_type) >= MAX_CACHED_TYPES:
                self._by_type.clear()
            head = event_type.encode()
            listeners = [listener for listener in self.listeners if listener.subscriptions.match(head)]
            self._by_type[event_type] = listeners
        return listeners

    def __call__(self, batch: Sequence[Record]) -> None:
        if not self.listeners:
            return
        wires: dict[_Listener, list[bytes]] = {}
        for record in batch:
            listeners = self._matching(record.type)
            if not listeners:
                continue
            wire = message(encode_event_frames(record.event))
            for listener in listeners:
                if (waiting := wires.get(listener)) is None:
                    wires[listener] = [wire]
                else:
                    waiting.append(wire)
        for listener, waiting in wires.items():
            listener.send(waiting)

    def dropped(self, count: int) -> None:
        """Count events dropped for a listener that fell behind."""
        self._metrics.egress_dropped.inc(count)


class _Listener(ZmtpPeer):
    """One SUB connection: its subscriptions, and events written within its byte budget."""

    SOCKET_TYPE = b"PUB"
    ACCEPTS = LISTENERS
    ROLE = "egress"

    def __init__(
        self, egress: Egress, *, message_timeout: float, read_buffer: memoryview, connections: ConnectionBudget
    ) -> None:
        super().__init__(
            max_message=MAX_SUBSCRIPTION,
            max_frames=1,
            message_timeout=message_timeout,
            read_buffer=read_buffer,
            budget=egress.budget,
            connections=connections,
        )
        self.egress = egress
        self.subscriptions = Subscriptions()
        self._dropping = 0  # events dropped in the current episode of falling behind

    @property
    def held(self) -> int:
        """Bytes held for the listener: unsent events, a subscription half-received, its subscriptions."""
        return super().held + self.subscriptions.cost

    def on_connected(self) -> None:
        # Tracked from the start, so that close() ends connections still in their handshake.
        self.egress.listeners.add(self)

    def on_lost(self) -> None:
        self.egress.listeners.discard(self)
        if self.subscriptions:
            self.egress.changed()

    def on_subscribe(self, prefix: bytes) -> None:
        try:
            added = self.subscriptions.add(prefix)
        except TooManySubscriptions as exc:
            self.egress.refused_subscription("zmq_subscriptions", str(exc))
            return
        if added:
            self.egress.budget.charge(len(prefix) + ENTRY_COST)
            self.egress.changed()

    def on_cancel(self, prefix: bytes) -> None:
        if self.subscriptions.remove(prefix):
            self.egress.changed()

    def on_refused(self, kind: str, text: str) -> None:
        # The same reasons as the ingest's: what was refused, not where.
        self.egress.refused(f"zmq_{kind}", text)

    def send(self, wires: list[bytes]) -> None:
        """Write events this listener subscribed to, as far as its buffer allows."""
        if self.transport is None:
            return
        room = self.egress.listener_buffer - self.unsent
        parts = []
        dropped = 0
        for wire in wires:
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
