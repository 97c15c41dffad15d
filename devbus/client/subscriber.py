"""Subscribers: iterate the bus's events from its ZeroMQ egress socket."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable, Iterator
from types import TracebackType
from typing import Any

import zmq
import zmq.asyncio

from devbus.client.config import resolve
from devbus.defaults import ZMQ_HEARTBEAT_MS, ZMQ_HEARTBEAT_TIMEOUT_MS
from devbus.envelope import Event
from devbus.errors import BusUnavailable
from devbus.frames import decode_event_frames
from devbus.typefilter import TypeFilter, parse_patterns

__all__ = ["AsyncSubscriber", "Subscriber", "prefixes"]

_GLOB = "*?["


def prefixes(patterns: tuple[str, ...]) -> list[bytes]:
    """The ZeroMQ prefix subscriptions that cover ``patterns`` (the text before any wildcard)."""
    if not patterns:
        return [b""]
    cut = [p[: min((p.index(c) for c in _GLOB if c in p), default=len(p))] for p in patterns]
    # A prefix covered by a shorter one adds nothing (ZeroMQ delivers once anyway).
    kept = [c for c in set(cut) if not any(o != c and c.startswith(o) for o in cut)]
    return sorted(c.encode() for c in kept)


class _Filtered:
    """Shared setup: subscribe by prefix, then match globs exactly on this side."""

    def __init__(self, types: Iterable[str] | str | None, egress: str | None) -> None:
        self.address = resolve(egress=egress).egress
        # `agent.` is short for `agent.*`; anything else is a glob as in ?types= on the stream.
        self.patterns = tuple(p + "*" if p.endswith(".") else p for p in parse_patterns(types))
        # ZeroMQ prefixes filter on the bus side, before anything is sent; the
        # glob then matches exactly here (`agent.created` must not pass `agent.created2`).
        self._exact = TypeFilter(self.patterns)

    def setup(self, socket: zmq.Socket[Any]) -> Any:
        """Subscribe and connect; return a monitor socket that reports the handshake."""
        socket.setsockopt(zmq.LINGER, 0)
        socket.setsockopt(zmq.HEARTBEAT_IVL, ZMQ_HEARTBEAT_MS)
        socket.setsockopt(zmq.HEARTBEAT_TIMEOUT, ZMQ_HEARTBEAT_TIMEOUT_MS)
        for prefix in prefixes(self.patterns):
            socket.setsockopt(zmq.SUBSCRIBE, prefix)
        monitor = socket.get_monitor_socket(zmq.EVENT_HANDSHAKE_SUCCEEDED)
        socket.connect(self.address)
        return monitor

    def unavailable(self, timeout: float) -> BusUnavailable:
        return BusUnavailable(
            f"No devbus at {self.address} (waited {timeout:g}s for its egress socket); "
            "start one with `devbus run`, or point DEVBUS_EGRESS at it"
        )

    def wanted(self, event: Event) -> bool:
        return self._exact(event.type)


class Subscriber:
    """Iterate events from egress: ``for event in Subscriber(types="agent.")``.

    ``types`` are globs (``agent.*``, ``rental.created``) or prefixes ending in a
    dot (``agent.``); like any ZeroMQ subscriber it sees only what is published
    after it has connected.
    """

    def __init__(
        self, *, types: Iterable[str] | str | None = None, egress: str | None = None, timeout: float = 5.0
    ) -> None:
        self._filter = _Filtered(types, egress)
        self.address = self._filter.address
        self._context: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
        self._socket = self._context.socket(zmq.SUB)
        monitor = self._filter.setup(self._socket)
        try:
            found = monitor.poll(int(timeout * 1000))
        finally:
            self._socket.disable_monitor()
            monitor.close(linger=0)
        if not found:
            self.close()
            raise self._filter.unavailable(timeout)

    def receive(self, *, timeout: float | None = None) -> Event | None:
        """Return the next matching event, or None if none arrives within ``timeout`` seconds."""
        deadline_ms = None if timeout is None else int(timeout * 1000)
        while True:
            if deadline_ms is not None and not self._socket.poll(deadline_ms, zmq.POLLIN):
                return None
            event = decode_event_frames(self._socket.recv_multipart())
            if self._filter.wanted(event):
                return event

    def __iter__(self) -> Iterator[Event]:
        while True:
            event = self.receive()
            if event is not None:
                yield event

    def close(self) -> None:
        """Close the socket."""
        self._socket.close(linger=0)
        self._context.term()

    def __enter__(self) -> Subscriber:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class AsyncSubscriber:
    """Iterate events from egress in asyncio code: ``async for event in AsyncSubscriber()``."""

    def __init__(
        self, *, types: Iterable[str] | str | None = None, egress: str | None = None, timeout: float = 5.0
    ) -> None:
        self._filter = _Filtered(types, egress)
        self.address = self._filter.address
        self._timeout = timeout
        self._context = zmq.asyncio.Context()
        self._socket = self._context.socket(zmq.SUB)
        self._monitor: zmq.asyncio.Socket | None = self._filter.setup(self._socket)

    async def connect(self) -> AsyncSubscriber:
        """Wait until the bus's egress accepted the connection; BusUnavailable after ``timeout``."""
        monitor, self._monitor = self._monitor, None
        if monitor is not None:
            try:
                found = await monitor.poll(int(self._timeout * 1000))
            finally:
                self._socket.disable_monitor()
                monitor.close(linger=0)
            if not found:
                self.close()
                raise self._filter.unavailable(self._timeout)
        return self

    async def receive(self) -> Event:
        """Wait for the next matching event."""
        while True:
            event = decode_event_frames(await self._socket.recv_multipart())
            if self._filter.wanted(event):
                return event

    async def __aiter__(self) -> AsyncIterator[Event]:
        while True:
            yield await self.receive()

    def close(self) -> None:
        """Close the socket."""
        if self._monitor is not None:
            self._socket.disable_monitor()
            self._monitor.close(linger=0)
            self._monitor = None
        self._socket.close(linger=0)
        self._context.term()

    async def __aenter__(self) -> AsyncSubscriber:
        return await self.connect()

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()
