"""ZeroMQ egress: every accepted event published on a bound PUB socket as ``[type, envelope]``."""

from __future__ import annotations

import logging
from collections.abc import Sequence

import zmq

from devbus.dispatcher import Published
from devbus.metrics import Metrics
from devbus.wire import encode_event_frames

__all__ = ["Egress"]

log = logging.getLogger(__name__)

# Plain ints: pyzmq's enum flags cost more per call than the send itself.
NOBLOCK = int(zmq.NOBLOCK)
SNDMORE = int(zmq.SNDMORE) | NOBLOCK


class Egress:
    """A dispatcher listener that sends each event once, without ever blocking the loop."""

    def __init__(self, socket: zmq.Socket[bytes], *, metrics: Metrics) -> None:
        self.socket = socket
        self._metrics = metrics
        self._failed = False

    def __call__(self, batch: Sequence[Published]) -> None:
        send = self.socket.send
        for item in batch:
            head, body = encode_event_frames(item.event)
            try:
                # A PUB socket drops for a subscriber at its high-water mark
                # instead of blocking, so a stalled listener never stalls the bus.
                send(head, SNDMORE)
                send(body, NOBLOCK)
            except zmq.ZMQError as exc:
                self._metrics.reject("zmq_egress")
                if not self._failed:
                    self._failed = True
                    log.warning("could not publish on the egress socket: %s", exc)
