"""The store interface: where the bus's one ordered log lives, and how it is read.

Every store (memory, SQLite, a Redis Stream) implements :class:`Store`. The
dispatcher stamps events and hands them to :meth:`Store.append`; the store gives
each an id, encodes its JSON once into a :class:`~devbus.bus.record.Record`,
commits it and then hands it, in log order, to the ``deliver`` callback given to
:meth:`Store.open`, through which the dispatcher feeds every output. Readers (a
resuming SSE stream, ``GET /history``, the catalogue's seeding) are cursors over
the same log: :meth:`Store.resolve` turns a client's id into a position,
:meth:`Store.read_after` and :meth:`Store.read_before` read bounded pages from
there.

A store only stores and reads. It knows no output, input or dispatcher (it
imports the record and shared modules only; ``tests/test_layers.py`` holds it
to that): what else reads a log that several buses share, such as the
cluster-wide ``--forward``, gets a narrow handle from the store through the app
(``store/redis_shared.py``), not a method of this interface.

The contract every store keeps (``tests/test_store.py`` checks it for each one):

Order and ids
    Ids are opaque strings, unique, and strictly increasing in log order (the
    store's own notion: ``run-seq`` for memory and SQLite, the stream's
    ``ms-n`` for Redis). Outside the store nobody compares or parses them.

Delivery (``deliver``)
    Called on the event loop's thread, from a plain callback (never awaited),
    with a non-empty list of :class:`Record` in log order. Each committed record
    is delivered exactly once, and only after it is committed and readable
    through :meth:`Store.read_after`. Records appended by this process and by
    others sharing the log (Redis) are all delivered, in the log's order.
    ``deliver`` may run before or after the append's future resolves: the memory
    and SQLite stores deliver right before they resolve it; a Redis store
    delivers from its read loop, whenever the stream hands them back, and
    resolves an append once its own records are delivered (so an answer to a
    sender can say whom its event reached). A record is never changed once
    made: every output reads the same one.

Acknowledgement (:meth:`Store.append`)
    Returns a future that resolves, on the loop, to the appended records in
    order once they are committed (durable as far as the store goes), or fails
    with :class:`~devbus.errors.StoreUnavailable`. Nothing is acknowledged to a
    sender before then. Calls are ordered: records of an earlier call come first
    in the log. ``append`` itself never blocks the loop: a store that writes to
    disk or a network does it in a thread or a task, batching what arrives in
    one loop turn.

Reads
    :meth:`Store.read_after`, :meth:`Store.read_before` and :meth:`Store.resolve`
    are coroutines run on the loop; a page never holds more than ``limit``
    records nor more than ``max_bytes`` of JSON, except that it always holds at
    least one record when there is one (so a single large event still moves a
    cursor on). An id the store does not know (``""`` included) resolves to a
    gap just before the oldest record retained. Reads never go past the last
    record handed to ``deliver`` (a shared stream is readable before this bus's
    read loop delivers it: clamp to what was delivered). The SSE cursor relies
    on it to hand over to the live fan-out with no duplicate, see
    ``devbus.bus.outputs.sse.replay``. A read fails with
    :class:`~devbus.errors.StoreUnavailable` while the store is away: at once
    when the store knows it, within a bounded time when it hangs. The views
    resolve a resume and read the first page before they answer, so a client
    gets a plain 503 rather than a broken 200.

Lifecycle
    :meth:`Store.open` (once, on the loop) connects or loads and starts
    delivering; a bad URL, an unreachable store or a store written by an
    incompatible version raises :class:`~devbus.errors.ConfigError` with one line
    saying what to do. :meth:`Store.close` waits for appends in flight, then
    stops delivering.
"""

from __future__ import annotations

import abc
import asyncio
from collections.abc import Sequence
from typing import Any

import msgspec

from devbus.bus.record import Deliver, Record
from devbus.envelope import Draft

__all__ = ["Resume", "Store"]


class Resume(msgspec.Struct, frozen=True):
    """Where a cursor resumes after a client's last id.

    ``after`` is always an id that :meth:`Store.read_after` accepts. ``gap`` is
    True when events after the client's id may be missing (the id is unknown,
    from another run or store, or older than what is retained): then ``after``
    is the id just before the oldest retained record, and the client is told so
    with a ``devbus.gap`` event.
    """

    after: str
    gap: bool


class Store(abc.ABC):
    """The ordered log of events; see the module docstring for the contract."""

    #: How the store is named in health, /metrics and logs (never with a password).
    name: str = "store"

    @property
    @abc.abstractmethod
    def run(self) -> str:
        """The identity of this log (kept across restarts by durable stores), as sent to clients."""

    @property
    @abc.abstractmethod
    def last_id(self) -> str | None:
        """The id of the newest record delivered so far, or None if none is retained."""

    @abc.abstractmethod
    def __len__(self) -> int:
        """Records retained (approximate for stores that trim lazily)."""

    @abc.abstractmethod
    async def open(self, deliver: Deliver) -> None:
        """Connect or load, then call ``deliver`` with each committed record in log order."""

    @abc.abstractmethod
    async def close(self) -> None:
        """Commit what is in flight, then stop delivering and release resources."""

    @abc.abstractmethod
    def append(self, drafts: Sequence[Draft], timestamp: str) -> asyncio.Future[list[Record]]:
        """Number ``drafts`` (all stamped ``timestamp``) and commit them; resolve once committed."""

    @abc.abstractmethod
    async def resolve(self, event_id: str) -> Resume:
        """Where to resume for a client whose last event was ``event_id``."""

    @abc.abstractmethod
    async def read_after(self, after: str, *, limit: int, max_bytes: int) -> list[Record]:
        """Return the records right after ``after`` (an id from ``resolve`` or a record), oldest first."""

    @abc.abstractmethod
    async def read_before(self, before: str | None, *, limit: int, max_bytes: int) -> list[Record]:
        """Return the newest records before ``before`` (None: the head), oldest first."""

    async def refresh(self) -> None:  # noqa: B027 - a hook: only a shared store needs it
        """Re-read counts that can change behind the bus's back, before health or /metrics report them.

        Only a shared store needs it (a Redis that lost its data, or that other buses trim).
        """

    def status(self) -> dict[str, Any]:
        """What health reports about the store: its name and state, plus store-specific numbers."""
        return {"name": self.name, "state": "up", "retained": len(self)}
