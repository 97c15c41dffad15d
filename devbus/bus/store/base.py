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
    order (an :class:`Appended`) once they are committed (durable as far as the
    store goes). It fails with :class:`~devbus.errors.StoreUnavailable` only when
    nothing of the call was stored, and with
    :class:`~devbus.errors.OutcomeUnknown` when the store cannot tell (it went
    away after the call reached it, and did not come back before the store
    closed): a store that loses its connection in the middle of a call asks
    again, with the call's own token, until it learns what happened. Nothing is
    acknowledged to a sender before then. Calls are ordered: records of an
    earlier call come first in the log. ``append`` itself never blocks the loop:
    a store that writes to disk or a network does it in a thread or a task,
    batching what arrives in one loop turn.

Idempotency (the :class:`Claim` an append may carry)
    Checked and recorded in the same transaction (or Lua call) as the append,
    so that no crash can separate them, and kept across restarts by the SQLite
    and Redis stores:

    - ``producer`` and ``seqs``: a ZeroMQ producer numbers its events 1, 2, 3, …;
      the store keeps the last seq it stored per producer (the newest
      ``MAX_PRODUCERS`` producers) and does not store a draft whose seq is not
      above it. Seqs increase within a claim, so what is skipped is a prefix
      (``Appended.skipped``). :meth:`Store.producer_seq` reads the last seq.
    - ``key`` (and ``fingerprint``): the append as a whole is stored once per key
      within ``KEY_WINDOW`` seconds (the newest ``MAX_KEYS`` keys); the same key
      again stores nothing and resolves to no records, with the ids the first
      append got in ``Appended.replayed``; the same key with another fingerprint
      fails with :class:`~devbus.errors.KeyReused`.

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

Nothing read back is trusted
    Every record a store hands on, to ``deliver`` or from a read, is checked as
    an event first (``checked.py``, with the rules input is held to): another
    program may write into a shared stream or edit a file. One that fails is
    skipped by every reader (a page of nothing but skipped records is read on
    past, never taken for the end of the log), counted by reason in
    :meth:`Store.status` (``skipped``) and logged, and never ends a reader. A
    store's background task (the Redis reader) is supervised: if it fails for
    any reason it is started again and :meth:`Store.status` says so.

Lifecycle
    :meth:`Store.open` (once, on the loop) connects or loads and starts
    delivering; a bad URL, an unreachable store, a store written by an
    incompatible version or a file another bus holds raises
    :class:`~devbus.errors.ConfigError` with one line saying what to do.
    :meth:`Store.close` waits for appends in flight, then stops delivering.
"""

from __future__ import annotations

import abc
import asyncio
from collections.abc import Sequence
from typing import Any

import msgspec

from devbus.bus.record import Deliver, Record
from devbus.envelope import Draft

__all__ = ["KEY_WINDOW", "MAX_KEYS", "MAX_PRODUCERS", "Appended", "Claim", "Resume", "Store"]

# Producers whose last seq a store keeps (the most recently seen): a dev machine runs a
# handful of publishers at a time, each a new producer; this many is weeks of restarts.
MAX_PRODUCERS = 10_000
# Idempotency keys a store keeps, and for how long: a client retries within seconds or
# minutes (a request that timed out, a process restarted); the count bounds a flood of keys.
MAX_KEYS = 10_000
KEY_WINDOW = 600.0


class Claim(msgspec.Struct, frozen=True):
    """What makes an append idempotent (see the module docstring): a producer's seqs, a key, or both.

    ``seqs`` holds one seq per draft, increasing. ``fingerprint`` names what the key
    was sent with (an HTTP request's method, path and body), so that a key reused
    for another request is refused instead of answered with the first one's ids.
    """

    key: str | None = None
    fingerprint: bytes = b""
    producer: str | None = None
    seqs: tuple[int, ...] = ()


class Appended(list[Record]):
    """The records one append stored, in order, and what it found already stored.

    ``skipped``: leading drafts of the claim's producer that were stored before
    (not stored again, no records). ``replayed``: for a claim whose key was used
    before, the ids the first append got (nothing was stored this time).
    """

    __slots__ = ("replayed", "skipped")

    def __init__(self, records: Sequence[Record] = (), *, skipped: int = 0, replayed: list[str] | None = None) -> None:
        super().__init__(records)
        self.skipped = skipped
        self.replayed = replayed


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
    def append(self, drafts: Sequence[Draft], timestamp: str, claim: Claim | None = None) -> asyncio.Future[Appended]:
        """Number ``drafts`` (all stamped ``timestamp``) and commit those ``claim`` allows; resolve once committed."""

    @abc.abstractmethod
    async def producer_seq(self, producer: str) -> int:
        """The last seq stored for ``producer`` (0 for one the store does not know)."""

    @abc.abstractmethod
    async def resolve(self, event_id: str) -> Resume:
        """Where to resume for a client whose last event was ``event_id``."""

    @abc.abstractmethod
    async def read_after(self, after: str, *, limit: int, max_bytes: int) -> list[Record]:
        """Return the records right after ``after`` (an id from ``resolve`` or a record), oldest first."""

    @abc.abstractmethod
    async def read_before(self, before: str | None, *, limit: int, max_bytes: int) -> list[Record]:
        """Return the newest records before ``before`` (None: the head), oldest first."""

    def announce(self, url: str) -> None:  # noqa: B027 - a hook: only a store that names its owner needs it
        """Note the URL this bus serves at, once it listens (the SQLite store names it to a second bus)."""

    async def refresh(self) -> None:  # noqa: B027 - a hook: only a shared store needs it
        """Re-read counts that can change behind the bus's back, before health or /metrics report them.

        Only a shared store needs it (a Redis that lost its data, or that other buses trim).
        """

    def status(self) -> dict[str, Any]:
        """What health reports about the store: its name and state, plus store-specific numbers."""
        return {"name": self.name, "state": "up", "retained": len(self)}
