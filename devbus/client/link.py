"""The publishers' socket to the bus's ingest: slow joiner, backpressure, holding through restarts.

The socket is an XPUB connected to the bus's ingest SUB, which gives three things a
plain PUB cannot: the bus's subscription arrives as a message, so the first event
waits until the bus listens (no slow joiner); ZMQ_XPUB_NODROP turns a full queue
into EAGAIN, so a fast sender is slowed down instead of losing events; and the
queue of a connecting socket outlives its connection, so while the bus restarts
events are held (up to ``hold``) and ZeroMQ delivers them when it is back. Only an
overflow while the bus is away drops events, and that is logged and counted in
``dropped``. Closing lingers until everything queued is handed to the kernel.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

import zmq
from zmq.utils.monitor import parse_monitor_message

from devbus.client.config import resolve
from devbus.errors import BusUnavailable, InvalidEvent
from devbus.frames import encode_frames

__all__ = ["POLL_MS", "Link", "wait_for_signal"]

log = logging.getLogger(__name__)

POLL_MS = 100  # how often a blocked send re-checks whether the bus went away
AWAY_LINGER_S = 5.0  # longest a close waits for a bus that is away
NOBLOCK = int(zmq.NOBLOCK)  # plain ints: pyzmq's enum flags cost per call
SNDMORE = int(zmq.SNDMORE)
_WATCHED = zmq.EVENT_HANDSHAKE_SUCCEEDED | zmq.EVENT_DISCONNECTED


class Link:
    """The XPUB socket, its monitor, and the connection state they reveal (never blocks)."""

    def __init__(
        self, *, ingest: str | None, token: str | None, hold: int, max_message: int, source: str | None
    ) -> None:
        config = resolve(ingest=ingest, token=token)
        self.address = config.ingest
        self.token = config.token
        self.hold = hold
        self.max_message = max_message
        self.source = source
        self.dropped = 0
        self.connected = False
        self.closed = False
        self._dropped_in_outage = 0
        self.context: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
        self.socket = self.context.socket(zmq.XPUB)
        self.socket.setsockopt(zmq.XPUB_NODROP, 1)
        self.socket.setsockopt(zmq.SNDHWM, hold)
        self.socket.setsockopt(zmq.SNDTIMEO, POLL_MS)
        self.monitor = self.socket.get_monitor_socket(_WATCHED)
        try:
            self.socket.connect(self.address)
        except zmq.ZMQError as exc:
            self._teardown(0)
            raise BusUnavailable(f"Cannot connect to the devbus ingest at {self.address!r}: {exc}") from exc

    def frames(self, type_: str, data: dict[str, Any] | None, source: str | None) -> list[bytes]:
        """Encode one event, refusing what the bus would refuse for its size."""
        frames = encode_frames(type_, data, source=source or self.source, token=self.token)
        size = len(frames[0]) + len(frames[1])
        if size > self.max_message:
            raise InvalidEvent(f"event {type_!r} is {size} bytes, over the bus's --max-message of {self.max_message}")
        return frames

    def subscribed(self) -> bool:
        """Consume the bus's subscription message if it has arrived."""
        try:
            message = self.socket.recv(zmq.NOBLOCK)
        except zmq.Again:
            return False
        if message[:1] == b"\x01":
            self.connected = True
            return True
        return False

    def refresh(self) -> None:
        """Apply pending monitor events: the bus went away or came back."""
        while True:
            try:
                event = parse_monitor_message(self.monitor.recv_multipart(zmq.NOBLOCK))
            except zmq.Again:
                return
            if event["event"] == zmq.EVENT_DISCONNECTED and self.connected:
                self.connected = False
                log.warning("devbus at %s went away; holding up to %d events until it is back", self.address, self.hold)
            elif event["event"] == zmq.EVENT_HANDSHAKE_SUCCEEDED and not self.connected:
                self.connected = True
                lost, self._dropped_in_outage = self._dropped_in_outage, 0
                if lost:
                    log.warning("devbus at %s is back; %d events were dropped while it was away", self.address, lost)
                else:
                    log.info("devbus at %s is back; delivering held events", self.address)

    def try_send(self, frames: list[bytes], *, block: bool) -> bool:
        """Queue ``frames``; False means the bus is there but slow, so wait and retry."""
        try:
            # A blocking send sleeps until the queue has room (up to SNDTIMEO); poll()
            # cannot do that wait, because an XPUB always reports POLLOUT.
            # While the bus is known to be away a full queue cannot drain, so do not wait.
            flags = 0 if block and self.connected else NOBLOCK
            # Two plain sends rather than send_multipart, whose per-call overhead
            # is several times the send; an XPUB checks its queue on the first
            # frame only, so the second one never fails on its own.
            self.socket.send(frames[0], flags | SNDMORE)
            self.socket.send(frames[1], flags)
            return True
        except zmq.Again:
            pass
        self.refresh()
        if self.connected:
            return False
        self.dropped += 1
        self._dropped_in_outage += 1
        if self._dropped_in_outage == 1:
            log.warning(
                "devbus at %s is away and %d events are held; dropping new events until it is back "
                "(see Publisher.dropped)",
                self.address,
                self.hold,
            )
        return True

    def unavailable(self, timeout: float) -> BusUnavailable:
        """The error for a bus that did not subscribe in time (and release everything)."""
        self._teardown(0)
        return BusUnavailable(
            f"No devbus at {self.address} (waited {timeout:g}s for its ingest socket); "
            "start one with `devbus run`, or point DEVBUS_INGEST at it"
        )

    def release(self, linger: float) -> None:
        """Close, giving queued events up to ``linger`` seconds to reach the kernel."""
        if self.closed:
            return
        self.refresh()
        if not self.connected:
            # Waiting the full linger for a bus that is not there would hold a
            # script's exit; a restart in progress still gets a few seconds.
            linger = min(linger, AWAY_LINGER_S)
            log.warning("devbus at %s is away; held events get %gs to be delivered", self.address, linger)
        self._teardown(int(linger * 1000))

    def _teardown(self, linger_ms: int) -> None:
        self.closed = True
        self.socket.disable_monitor()
        self.monitor.close(linger=0)
        self.socket.close(linger=linger_ms)
        # term() is what waits for the linger: without it a script that exits
        # right after its last emit would lose whatever was still queued.
        self.context.term()


async def wait_for_signal(socket: zmq.Socket[bytes], within: float) -> None:
    """Wait until the socket's FD signals a change (or ``within`` seconds pass); the caller re-checks."""
    loop = asyncio.get_running_loop()
    fd = int(socket.getsockopt(zmq.FD))
    woken: asyncio.Future[None] = loop.create_future()

    def wake() -> None:
        if not woken.done():
            woken.set_result(None)

    loop.add_reader(fd, wake)
    try:
        # The FD is edge-triggered and only re-armed once pending commands are
        # processed, which reading EVENTS does; a change that slipped in before
        # this point costs at most ``within`` seconds.
        if int(socket.getsockopt(zmq.EVENTS)) & zmq.POLLIN:
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(woken, within)
    finally:
        loop.remove_reader(fd)
