"""Publishers: push events onto the bus over ZeroMQ, acknowledged; never break the app that uses them.

``Publisher`` (sync) and ``AsyncPublisher`` share one constructor, one outbox
(``devbus.client.outbox``: the events not yet acknowledged) and one link
(``devbus.client.link``: the socket and its thread): ``emit`` appends to the
outbox and returns, the link delivers in order once a bus answers and keeps
each event until the bus has stored it, and ``close`` waits a bounded time for
the rest and says what it could not deliver.
"""

from __future__ import annotations

import asyncio
import atexit
import logging
import os
import threading
from types import TracebackType
from typing import Any, ClassVar

from devbus.client.link import Link
from devbus.client.outbox import Outbox, State
from devbus.defaults import MIB
from devbus.frames import encode_frames

__all__ = ["AsyncPublisher", "Publisher", "emit"]

log = logging.getLogger("devbus.client.outbox")  # where a publisher's warnings have always been logged

RETRY_S = 0.005  # longest an async emit waits for room before trying again


class _Publisher:
    """What both publishers are built from: their options and, once started, their outbox."""

    # Whether the outbox (its socket and thread) starts with the publisher or at first use.
    _STARTS_AT_ONCE: ClassVar[bool]

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
        """Configure a publisher; nothing waits for a bus.

        ``ingest`` and ``token`` default to DEVBUS_INGEST and DEVBUS_TOKEN; ``source`` is
        the default source of its events; ``timeout`` is how long a bus that never
        answered is waited for before events are held (and how long ``wait_for_bus``
        waits); ``hold`` bounds the events not yet acknowledged by the bus (those held
        while no bus is there included); ``linger`` is how long ``close`` waits for them
        to be acknowledged; ``max_message`` is the bus's --max-message, so an event it
        would refuse is refused here.
        """
        self._options: dict[str, Any] = {
            "ingest": ingest,
            "token": token,
            "hold": hold,
            "max_message": max_message,
            "source": source,
            "timeout": timeout,
        }
        self._linger = linger
        self._outbox: Outbox | None = None
        self._link: Link | None = None
        if self._STARTS_AT_ONCE:
            self._start()

    def _start(self) -> Outbox:
        if self._outbox is None:
            outbox = Outbox(**self._options)
            self._link = Link(outbox)
            self._outbox = outbox
        return self._outbox

    def _close(self, *, warn: bool) -> None:
        outbox = self._start()
        if outbox.closed:
            return
        outbox.settle(self._linger)
        assert self._link is not None
        outbox.undelivered = self._link.close()
        if warn and outbox.owes_report:
            log.warning("%s", outbox.report())

    @property
    def dropped(self) -> int:
        """Events dropped because the bus was away longer than ``hold`` events."""
        return self._outbox.dropped if self._outbox is not None else 0

    @property
    def undelivered(self) -> int:
        """Events the bus had not acknowledged when ``close`` gave up waiting for it."""
        return self._outbox.undelivered if self._outbox is not None else 0

    @property
    def rejected(self) -> int:
        """Events the bus refused for good (each reason logged once): a wrong token, a limit of the bus."""
        return self._outbox.rejected if self._outbox is not None else 0

    @property
    def connected(self) -> bool:
        """Whether a bus has answered this publisher's current connection."""
        return self._outbox is not None and self._outbox.state is State.UP


class Publisher(_Publisher):
    """Send events to the bus from synchronous code; ``emit`` never blocks on a bus that is away."""

    _STARTS_AT_ONCE = True

    @property
    def address(self) -> str:
        """The ingest address this publisher sends to."""
        return self._start().address

    def report(self) -> str:
        """One line saying what was not delivered (after ``close``), and why."""
        return self._start().report()

    def wait_for_bus(self) -> Publisher:
        """Wait until a bus listens; BusUnavailable after the publisher's ``timeout``."""
        outbox = self._start()
        if not outbox.wait_until_up(outbox.timeout):
            raise outbox.unavailable()
        return self

    def emit(self, event_type: str, /, data: dict[str, Any] | None = None, *, source: str | None = None) -> None:
        """Send one event; wait only while a bus is there but slow, hold it while none is."""
        outbox = self._start()
        outbox.offer(outbox.frames(event_type, data, source), block=True)

    def close(self, *, warn: bool = True) -> None:
        """Deliver what is held (up to ``linger`` seconds), then close; warn (unless told not to,
        for a caller that reports ``undelivered`` itself) about what was not delivered."""
        self._close(warn=warn)

    def __enter__(self) -> Publisher:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class AsyncPublisher(_Publisher):
    """Send events to the bus from asyncio code; works with and without a bus running.

    ``async with AsyncPublisher() as bus`` (or ``connect()`` / ``aclose()``) starts it
    without waiting; ``await bus.wait_for_bus()`` is for callers that need a bus.
    """

    _STARTS_AT_ONCE = False

    async def connect(self) -> AsyncPublisher:
        """Start the publisher; it does not wait for a bus (see ``wait_for_bus``)."""
        self._start()
        return self

    async def wait_for_bus(self) -> AsyncPublisher:
        """Wait until a bus listens; BusUnavailable after the publisher's ``timeout``."""
        outbox = self._start()
        if not await asyncio.to_thread(outbox.wait_until_up, outbox.timeout):
            raise outbox.unavailable()
        return self

    async def emit(self, event_type: str, /, data: dict[str, Any] | None = None, *, source: str | None = None) -> None:
        """Send one event; wait only while a bus is there but slow, hold it while none is."""
        outbox = self._start()
        frames = outbox.frames(event_type, data, source)
        # Room appears as the bus acknowledges, on the link's thread, which signals no asyncio object.
        while not outbox.offer(frames, block=False):  # noqa: ASYNC110
            await asyncio.sleep(RETRY_S)

    async def aclose(self) -> None:
        """Deliver what is held (up to ``linger`` seconds), then close."""
        if self._outbox is not None:
            await asyncio.to_thread(self._close, warn=True)

    async def __aenter__(self) -> AsyncPublisher:
        return await self.connect()

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()


_default: Publisher | None = None
_default_pid = 0
_default_lock = threading.Lock()
EXIT_LINGER_S = 10.0  # what `devbus.emit` gives a reachable bus at interpreter exit


def emit(event_type: str, /, data: dict[str, Any] | None = None, *, source: str | None = None) -> None:
    """Send one event through a shared Publisher, delivered (or reported) when the process exits."""
    global _default, _default_pid
    # A malformed event is the caller's bug: say so before trying to reach a bus.
    encode_frames(event_type, data, source=source)
    with _default_lock:
        # A forked child must not share its parent's ZeroMQ context.
        if _default is None or _default_pid != os.getpid():
            _default = Publisher(linger=EXIT_LINGER_S)
            _default_pid = os.getpid()
            atexit.register(_default.close)
        publisher = _default
    publisher.emit(event_type, data, source=source)
