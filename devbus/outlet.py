"""Outlets: one subscriber's bounded buffer of encoded frames, drained by its writer."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from devbus.filters import TypeFilter

__all__ = ["Outlet"]


class Outlet:
    """Pending bytes for one subscriber; everything pending is taken as one write.

    The dispatcher pushes already-encoded chunks and wakes the writer at most once
    per loop turn, so a burst becomes one socket write instead of one per event.
    Past ``limit`` unsent bytes the subscriber is evicted: it can reconnect and
    resume from history, but it can never grow the bus's memory.
    """

    __slots__ = ("_limit", "_on_evict", "_pending", "_size", "_waiter", "closed", "evicted", "named", "type_filter")

    def __init__(
        self,
        type_filter: TypeFilter,
        *,
        named: bool,
        limit: int,
        on_evict: Callable[[Outlet], None],
    ) -> None:
        self.type_filter = type_filter
        self.named = named
        self.closed = False
        self.evicted = False
        self._limit = limit
        self._on_evict = on_evict
        self._pending: list[bytes] = []
        self._size = 0
        self._waiter: asyncio.Future[None] | None = None

    @property
    def pending_bytes(self) -> int:
        """Bytes pushed but not yet taken by the writer."""
        return self._size

    def preload(self, chunk: bytes) -> None:
        """Queue ``chunk`` before the stream starts (connected frame, replay), unbounded by design."""
        self._pending.append(chunk)
        self._size += len(chunk)

    def push(self, chunk: bytes) -> None:
        """Queue ``chunk``; evict the subscriber if it is behind by more than the bound."""
        if self.closed:
            return
        self._pending.append(chunk)
        self._size += len(chunk)
        # Only a writer that is still busy with its previous chunk is behind: an
        # idle one takes everything pending on its next turn, however large.
        if self._size > self._limit and self._waiter is None:
            self.evicted = True
            self._pending.clear()
            self._size = 0
            self.close()
            self._on_evict(self)
            return
        self._wake()

    def close(self) -> None:
        """Stop after what is pending has been taken (nothing, if evicted)."""
        self.closed = True
        self._wake()

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def take(self, *, idle: float) -> bytes | None:
        """Return everything pending as one chunk; b'' after ``idle`` seconds without any; None once closed."""
        if not self._pending:
            if self.closed:
                return None
            loop = asyncio.get_running_loop()
            self._waiter = waiter = loop.create_future()
            timer = loop.call_later(idle, self._wake)
            try:
                await waiter
            finally:
                timer.cancel()
                self._waiter = None
            if not self._pending:
                return None if self.closed else b""
        chunk = self._pending[0] if len(self._pending) == 1 else b"".join(self._pending)
        self._pending.clear()
        self._size = 0
        return chunk
