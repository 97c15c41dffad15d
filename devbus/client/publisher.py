"""Publishers: push events onto the bus over ZeroMQ without losing any.

Each publisher owns a Link (devbus.client.link), which explains how: it waits for the
bus's subscription, slows the sender down instead of dropping, holds events while
the bus restarts, and flushes on close.
"""

from __future__ import annotations

import asyncio
import atexit
import os
import threading
import time
from types import TracebackType
from typing import Any

import zmq

from devbus.bus.settings import MIB
from devbus.client.link import POLL_MS, Link, wait_for_signal
from devbus.errors import BusUnavailable
from devbus.frames import encode_frames

__all__ = ["AsyncPublisher", "Publisher", "emit"]

RETRY_S = 0.005  # longest an async send waits for room before trying again


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
        self._link = Link(ingest=ingest, token=token, hold=hold, max_message=max_message, source=source)
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
        self._link: Link | None = None

    async def connect(self) -> AsyncPublisher:
        """Connect and wait for the bus's subscription; BusUnavailable after ``timeout``."""
        if self._link is None:
            link = Link(**self._options)  # type: ignore[arg-type]
            try:
                async with asyncio.timeout(self._timeout):
                    while not link.subscribed():
                        await wait_for_signal(link.socket, POLL_MS / 1000)
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
            await wait_for_signal(link.socket, RETRY_S)

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
