"""Publishers: push events onto the bus over ZeroMQ without losing any.

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
import atexit
import contextlib
import logging
import os
import threading
import time
from types import TracebackType
from typing import Any

import zmq
from zmq.utils.monitor import parse_monitor_message

from devbus.client_config import resolve
from devbus.errors import BusUnavailable, InvalidEvent
from devbus.settings import MIB
from devbus.wire import encode_frames

__all__ = ["AsyncPublisher", "Publisher", "emit"]

log = logging.getLogger(__name__)

POLL_MS = 100  # how often a blocked send re-checks whether the bus went away
AWAY_LINGER_S = 5.0  # longest a close waits for a bus that is away
RETRY_S = 0.005  # longest an async send waits for room before trying again
NOBLOCK = int(zmq.NOBLOCK)  # plain ints: pyzmq's enum flags cost per call
SNDMORE = int(zmq.SNDMORE)
_WATCHED = zmq.EVENT_HANDSHAKE_SUCCEEDED | zmq.EVENT_DISCONNECTED


class _Link:
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


class Publisher:
    """Send events to the bus from synchronous code; use as a context manager."""

    def __init__(
        self,
        *,
        ingest: str | None = None,
        token: str | None = None,
        source: str | None = None,
        timeout: float = 5.0,
        hold: int = 10_000,
        linger: float = 30.0,
        max_message: int = MIB,
    ) -> None:
        self._link = _Link(ingest=ingest, token=token, hold=hold, max_message=max_message, source=source)
        self._linger = linger
        self._lock = threading.Lock()
        deadline = time.monotonic() + timeout
        while not self._link.subscribed():
            left = deadline - time.monotonic()
            if left <= 0:
                raise self._link.unavailable(timeout)
            self._link.socket.poll(max(1, int(min(left, POLL_MS / 1000) * 1000)), zmq.POLLIN)

    @property
    def address(self) -> str:
        """The ingest address this publisher sends to."""
        return self._link.address

    @property
    def dropped(self) -> int:
        """Events dropped because the bus was away longer than ``hold`` events."""
        return self._link.dropped

    @property
    def connected(self) -> bool:
        """Whether the bus is connected right now."""
        with self._lock:
            self._link.refresh()
            return self._link.connected

    def emit(self, type: str, data: dict[str, Any] | None = None, *, source: str | None = None) -> None:
        """Send one event; block while the bus is slow, hold it while the bus is away."""
        frames = self._link.frames(type, data, source)
        with self._lock:
            if self._link.closed:
                raise BusUnavailable(f"This publisher to {self.address} is closed")
            while not self._link.try_send(frames, block=True):  # each try waits up to POLL_MS
                pass

    def close(self) -> None:
        """Deliver what is queued (up to ``linger`` seconds), then close."""
        with self._lock:
            self._link.release(self._linger)

    def __enter__(self) -> Publisher:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class AsyncPublisher:
    """Send events to the bus from asyncio code: ``async with AsyncPublisher() as bus``."""

    def __init__(
        self,
        *,
        ingest: str | None = None,
        token: str | None = None,
        source: str | None = None,
        timeout: float = 5.0,
        hold: int = 10_000,
        linger: float = 30.0,
        max_message: int = MIB,
    ) -> None:
        self._options = {"ingest": ingest, "token": token, "hold": hold, "max_message": max_message, "source": source}
        self._timeout = timeout
        self._linger = linger
        self._link: _Link | None = None

    async def connect(self) -> AsyncPublisher:
        """Connect and wait for the bus's subscription; BusUnavailable after ``timeout``."""
        if self._link is None:
            link = _Link(**self._options)  # type: ignore[arg-type]
            try:
                async with asyncio.timeout(self._timeout):
                    while not link.subscribed():
                        await _signal(link.socket, POLL_MS / 1000)
            except TimeoutError:
                raise link.unavailable(self._timeout) from None
            self._link = link
        return self

    @property
    def dropped(self) -> int:
        """Events dropped because the bus was away longer than ``hold`` events."""
        return self._link.dropped if self._link is not None else 0

    async def emit(self, type: str, data: dict[str, Any] | None = None, *, source: str | None = None) -> None:
        """Send one event; wait while the bus is slow, hold it while the bus is away."""
        link = self._link or (await self.connect())._link
        assert link is not None
        if link.closed:
            raise BusUnavailable(f"This publisher to {link.address} is closed")
        frames = link.frames(type, data, source)
        while not link.try_send(frames, block=False):
            await _signal(link.socket, RETRY_S)

    async def aclose(self) -> None:
        """Deliver what is queued (up to ``linger`` seconds), then close."""
        if self._link is not None:
            await asyncio.to_thread(self._link.release, self._linger)

    async def __aenter__(self) -> AsyncPublisher:
        return await self.connect()

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()


async def _signal(socket: zmq.Socket[bytes], within: float) -> None:
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


_default: Publisher | None = None
_default_pid = 0
_default_lock = threading.Lock()


def emit(type: str, data: dict[str, Any] | None = None, *, source: str | None = None) -> None:
    """Send one event through a shared Publisher, flushed when the process exits."""
    global _default, _default_pid
    # A malformed event is the caller's bug: say so before trying to reach a bus.
    encode_frames(type, data, source=source)
    with _default_lock:
        # A forked child must not share its parent's ZeroMQ context.
        if _default is None or _default_pid != os.getpid():
            _default = Publisher()
            _default_pid = os.getpid()
            atexit.register(_default.close)
        publisher = _default
    publisher.emit(type, data, source=source)
