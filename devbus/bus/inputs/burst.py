"""The ZeroMQ ingest's burst gate: senders wait while the subscribers who keep up catch up.

While subscribers are behind (their sockets backed up) but keep taking what they
were sent, the ingest stops reading senders, so the kernel and the senders' queues
hold a burst instead of the bus. The subscribers say when one of them moves (no
polling). One that moves nothing for STALLED seconds is not waited for (its buffer
bound evicts it), and no pause lasts more than CATCH_UP.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Protocol

__all__ = ["CATCH_UP", "STALLED", "BurstGate", "Readers"]

CATCH_UP = 1.0
STALLED = 0.03


class Readers(Protocol):
    """What the gate watches: the subscribers whose sockets are backed up (the SSE fan-out's laggards)."""

    @property
    def behind(self) -> int:
        """How many subscribers are behind now."""

    def when_moved(self, callback: Callable[[], None]) -> Callable[[], None]:
        """Call ``callback`` once, on the next progress of any of them; return a function that cancels it."""


class BurstGate:
    """Closed while readers catch up; ``on_change`` is called each time it opens or closes."""

    def __init__(self, readers: Readers, *, on_change: Callable[[], None]) -> None:
        self._readers = readers
        self._on_change = on_change
        self._loop = asyncio.get_running_loop()
        self._closed = False  # every sender waits
        self._stopped = False  # the ingest is stopping: never wait again
        self._waited_since = 0.0
        self._stall: asyncio.TimerHandle | None = None
        self._cancel_wait: Callable[[], None] | None = None

    @property
    def closed(self) -> bool:
        """Whether senders wait now."""
        return self._closed

    def check(self) -> None:
        """Close the gate if readers are behind (after a batch went out to them)."""
        if self._readers.behind and not self._closed and not self._stopped:
            self._closed = True
            self._on_change()
            self._waited_since = self._loop.time()
            self._wait_for_readers()

    def stop(self) -> None:
        """Open the gate for good: the ingest stops, and the outputs may be closed already."""
        self._stopped = True
        self._open()

    def _wait_for_readers(self) -> None:
        self._stall = self._loop.call_later(STALLED, self._open)
        self._cancel_wait = self._readers.when_moved(self._readers_moved)

    def _readers_moved(self) -> None:
        self._cancel_wait = None
        if self._stall is not None:
            self._stall.cancel()
            self._stall = None
        if self._readers.behind and self._loop.time() - self._waited_since < CATCH_UP and not self._stopped:
            self._wait_for_readers()
        else:
            self._open()

    def _open(self) -> None:
        # Readers caught up, or nobody moved for STALLED seconds (the stalled ones
        # will be evicted), or CATCH_UP passed, or the ingest is stopping: read on.
        if self._stall is not None:
            self._stall.cancel()
            self._stall = None
        if self._cancel_wait is not None:
            self._cancel_wait()
            self._cancel_wait = None
        if self._closed:
            self._closed = False
            self._on_change()
