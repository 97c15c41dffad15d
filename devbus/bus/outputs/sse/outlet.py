"""Outlets: one subscriber's bounded buffer of encoded frames, written out once per loop turn."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Protocol

from devbus.bus.outputs.sse.laggards import Laggards
from devbus.typefilter import TypeFilter

__all__ = ["Outlet", "WriteNow"]


class WriteNow(Protocol):
    """A subscriber's socket, written without waiting."""

    @property
    def buffered(self) -> int:
        """Bytes written but still waiting in the socket's send buffer."""

    def __call__(self, chunk: bytes) -> bool:
        """Write ``chunk`` now and return True, or return False if the socket is backed up."""


class Outlet:
    """Pending bytes for one subscriber; everything pending goes out as one write.

    The dispatcher pushes already-encoded chunks and calls :meth:`flush` once per
    loop turn, so a burst becomes one socket write instead of one per event. While
    the subscriber keeps up, the flush writes straight to its socket through
    ``write_now`` (no task switch, no future); when the socket is backed up, the
    stream's task takes what is pending and waits for the socket to drain.
    Past ``limit`` unsent bytes the subscriber is evicted: it can reconnect and
    resume from history, but it can never grow the bus's memory. What it holds
    counts against the bus's memory budget too, which may :meth:`drop` it: its
    socket's unsent bytes and what was queued for it alone (``owned``), and the
    fan-out's chunks it shares with its group (``shared``, counted once per group
    by the fan-out).
    """

    __slots__ = (
        "_behind",
        "_charge",
        "_laggards",
        "_limit",
        "_on_abort",
        "_on_evict",
        "_own",
        "_pending",
        "_size",
        "_transport",
        "_waiter",
        "anchor",
        "closed",
        "evicted",
        "named",
        "type_filter",
        "write_now",
    )

    def __init__(
        self,
        type_filter: TypeFilter,
        *,
        named: bool,
        limit: int,
        on_evict: Callable[[Outlet], None],
        laggards: Laggards | None = None,
        charge: Callable[[int], None] | None = None,
    ) -> None:
        self.type_filter = type_filter
        self.named = named
        self.closed = False
        self.evicted = False
        self._limit = limit
        self._on_evict = on_evict
        self._pending: list[bytes] = []
        self._size = 0
        self._own = 0  # bytes of ``_pending`` that are this outlet's alone (the rest: the fan-out's shared chunks)
        self._waiter: asyncio.Future[None] | None = None
        # Told of bytes that come to be held for this subscriber alone (the memory budget's charge).
        self._charge = charge
        # Told when this subscriber falls behind and when it moves again, for burst inputs.
        self._laggards = laggards
        self._behind = False
        # Set by the stream once its headers are out: writes a chunk to the socket
        # at once, or returns False if the socket is backed up or closing.
        self.write_now: WriteNow | None = None
        # Set by the stream: drops its connection at once (on eviction).
        self._on_abort: Callable[[], None] | None = None
        self._transport: asyncio.WriteTransport | None = None  # set by the stream: what its socket holds
        # Set by the fan-out for a cursor that joined while still reading the store:
        # the id of the first record queued here, where the cursor's reading stops.
        self.anchor: str | None = None

    @property
    def pending_bytes(self) -> int:
        """Bytes pushed but not yet taken by the writer."""
        return self._size

    @property
    def waiting(self) -> bool:
        """Whether the stream's task is idle, waiting for frames (so a flush may write for it)."""
        return self._waiter is not None and not self._waiter.done()

    @property
    def unsent(self) -> int:
        """Bytes this subscriber is behind by: buffered for its socket, plus pending ones while its task is busy.

        Pending bytes of an idle stream do not count: the next flush writes them.
        """
        behind = 0 if self.waiting else self._size
        return behind + (self.write_now.buffered if self.write_now is not None else 0)

    def preload(self, chunk: bytes) -> None:
        """Queue ``chunk`` before the stream starts (connected frame, replay), unbounded by design."""
        self._pending.append(chunk)
        self._size += len(chunk)
        self._own += len(chunk)
        if self._charge is not None:
            self._charge(len(chunk))

    def push(self, chunk: bytes) -> None:
        """Queue ``chunk`` until the next flush; evict the subscriber if it is behind by more than the bound."""
        if self.closed:
            return
        self._pending.append(chunk)
        self._size += len(chunk)
        # Only a writer that is still busy with its previous chunk is behind: an
        # idle one takes everything pending on the next flush, however large.
        if self._size > self._limit and self._waiter is None:
            self.evicted = True
            self._pending.clear()
            self._size = self._own = 0
            self.close()
            self._on_evict(self)

    def flush(self) -> int:
        """Send everything pending: straight to the socket if it keeps up, else through the stream's task.

        Return the bytes written straight to the socket, which it may keep (for the memory budget).
        """
        waiter = self._waiter
        if not self._pending or waiter is None or waiter.done():
            # The task is busy writing or about to run (not waiting): it takes what is pending itself.
            return 0
        shared = len(self._pending) == 1 and not self._own  # the fan-out's chunk itself, not a copy
        chunk = self._take_pending()
        if self.write_now is not None and self.write_now(chunk):
            return len(chunk)
        # The socket is backed up (or not ready): the task writes the chunk and waits for it to drain.
        self._pending.append(chunk)
        self._size = len(chunk)
        if not shared:  # a copy of its own
            self._own = len(chunk)
            if self._charge is not None:
                self._charge(len(chunk))
        waiter.set_result(None)
        if self._laggards is not None and not self._behind:
            self._behind = True
            self._laggards.fell_behind(self)
        return 0

    @property
    def kind(self) -> str:
        """What this subscriber is, for the memory budget: resuming from history, or live."""
        return "replay" if self.write_now is None else "sse"

    @property
    def held(self) -> int:
        """Bytes held for this subscriber, shared or not: pending here, and unsent in its socket."""
        transport = self._transport
        return self._size + (transport.get_write_buffer_size() if transport is not None else 0)

    @property
    def owned(self) -> int:
        """Bytes held for this subscriber alone: unsent in its socket, and queued for it only."""
        transport = self._transport
        return self._own + (transport.get_write_buffer_size() if transport is not None else 0)

    @property
    def shared(self) -> int:
        """Bytes of the fan-out's chunks pending here, the same objects as its group's (a suffix of theirs)."""
        return self._size - self._own

    def attach(self, transport: asyncio.WriteTransport) -> None:
        """The subscriber's connection: what it holds is counted, and eviction aborts it."""
        self._transport = transport
        self.on_abort(transport.abort)

    def drop(self) -> None:
        """Evict the subscriber for the memory budget: its connection is closed now and what it held freed."""
        self.evicted = True
        self._pending.clear()
        self._size = self._own = 0
        self.abort()

    def on_abort(self, abort: Callable[[], None]) -> None:
        """Call ``abort`` to drop the connection if this subscriber is evicted (at once, if it already is)."""
        self._on_abort = abort
        if self.evicted:
            abort()

    def abort(self) -> None:
        """Drop the connection now, without waiting for anything pending to be sent."""
        self.close()
        if self._on_abort is not None:
            self._on_abort()

    def close(self) -> None:
        """Stop after what is pending has been taken (nothing, if evicted)."""
        self.closed = True
        self._wake()
        self._moved(caught_up=True)

    def _moved(self, *, caught_up: bool) -> None:
        if self._behind and self._laggards is not None:
            self._behind = not caught_up
            self._laggards.moved(self, caught_up=caught_up)

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def take(self, *, idle: float) -> bytes | None:
        """Return everything pending as one chunk; b'' after ``idle`` seconds without any; None once closed."""
        # The stream's task is back for more: whatever it took last has been written.
        self._moved(caught_up=not self._pending)
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
        return self._take_pending()

    def take_now(self) -> bytes:
        """Return everything pending as one chunk (b'' if nothing is), without waiting."""
        return self._take_pending() if self._pending else b""

    def _take_pending(self) -> bytes:
        chunk = self._pending[0] if len(self._pending) == 1 else b"".join(self._pending)
        self._pending.clear()
        self._size = self._own = 0
        return chunk
