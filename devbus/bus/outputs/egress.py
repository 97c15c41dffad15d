"""ZeroMQ egress: every accepted event published on a bound XPUB socket as ``[type, envelope]``."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence

import zmq

from devbus.bus.metrics import Metrics
from devbus.bus.store.base import Record
from devbus.frames import encode_event_frames

__all__ = ["Egress"]

log = logging.getLogger(__name__)

# Plain ints: pyzmq's enum flags cost more per call than the send itself.
NOBLOCK = int(zmq.NOBLOCK)
SNDMORE = int(zmq.SNDMORE) | NOBLOCK


class Egress:
    """A dispatcher output that sends each event once, without ever blocking the loop.

    The socket is an XPUB so that the bus sees its listeners' subscriptions: while
    nobody listens (the usual case) events are not even encoded. Like a PUB it
    drops for a listener at its high-water mark, so a stalled listener never
    stalls the bus.
    """

    def __init__(self, socket: zmq.Socket[bytes], *, metrics: Metrics) -> None:
        self.socket = socket
        self.topics: set[bytes] = set()
        self._metrics = metrics
        self._failed = False
        self._loop = asyncio.get_running_loop()
        self._fd = int(socket.getsockopt(zmq.FD))

    def start(self) -> None:
        """Watch the socket for subscriptions on the running loop."""
        self._loop.add_reader(self._fd, self._read_subscriptions)
        self._read_subscriptions()

    def stop(self) -> None:
        """Stop watching the socket (the owner closes it)."""
        self._loop.remove_reader(self._fd)

    def _read_subscriptions(self) -> None:
        # The FD is edge-triggered: read until EAGAIN, which also lets libzmq
        # attach newly connected listeners.
        while not self.socket.closed:
            try:
                message = self.socket.recv(NOBLOCK)
            except zmq.Again:
                return
            # XPUB reports the first subscription to a topic and the last
            # unsubscription from it, so this set is exactly what is listened to.
            if message[:1] == b"\x01":
                self.topics.add(message[1:])
            elif message[:1] == b"\x00":
                self.topics.discard(message[1:])

    def __call__(self, batch: Sequence[Record]) -> None:
        if not self.topics:
            return
        send = self.socket.send
        for record in batch:
            head, body = encode_event_frames(record.event)
            try:
                send(head, SNDMORE)
                send(body, NOBLOCK)
            except zmq.ZMQError as exc:
                self._metrics.reject("zmq_egress")
                if not self._failed:
                    self._failed = True
                    log.warning("could not publish on the egress socket: %s", exc)
