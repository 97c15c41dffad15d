"""Where a shared target stands, written to Redis behind the POSTs: one write in flight at a time.

The holder notes each event the target took; a task writes the newest noted id
under the lease (``Lease.commit``) while the next POSTs go on, so a forward
costs no extra round trip, and a new holder repeats only what was taken since
the last write landed (usually the one or two events of one round trip).
"""

from __future__ import annotations

import asyncio

from devbus.bus.outputs.forward.lease import Lease

__all__ = ["Progress"]


class Progress:
    """The cursor writes of one holding."""

    def __init__(self, lease: Lease) -> None:
        self._lease = lease
        self._noted: str | None = None
        self._written: str | None = None
        self._writing: asyncio.Task[None] | None = None

    def note(self, entry_id: str) -> None:
        """Record that the target took every event up to ``entry_id``; raise why an earlier write failed."""
        self._noted = entry_id
        if self._writing is not None and self._writing.done():
            self._writing.result()  # LeaseLost, or a Redis failure: the holding ends
            self._writing = None
        if self._writing is None:
            self._writing = asyncio.create_task(self._write(), name="forward cursor")

    async def flush(self) -> None:
        """Return once the newest noted id is written."""
        if self._writing is not None:
            await self._writing
            self._writing = None

    async def _write(self) -> None:
        while self._noted != self._written:
            noted = self._noted
            assert noted is not None
            await self._lease.commit(noted)
            self._written = noted

    def cancel(self) -> None:
        """Stop writing (the holding ended): the next holder starts at the last id written."""
        if self._writing is not None:
            self._writing.cancel()
            self._writing = None
