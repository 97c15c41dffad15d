"""Answering the Redis store's appends: matching the ids Redis gave with the records this bus delivered.

An append is answered (its future resolved) once this bus's reader has delivered
every entry it added, so that the answer can say whom each event reached and a
read of this bus right after sees them. The reader may deliver an entry before the
append's reply with its ids has come back (another connection, another order), so
records read while a write is in flight are kept and matched when the ids arrive.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable, Sequence

from devbus.bus.record import Record
from devbus.bus.store.base import Appended, Claim
from devbus.bus.store.claims import key_reused
from devbus.bus.store.redis_codec import entry_tail, record
from devbus.bus.store.redis_link import StreamId, parse_stream_id
from devbus.bus.store.redis_script import Outcome
from devbus.envelope import Draft

__all__ = ["Append", "AppendTracker"]


class Append:
    """One append call: its entries and claim, then their ids, then the records this bus delivered for them."""

    __slots__ = ("claim", "future", "ids", "last", "missing", "records", "skipped", "slots", "tails", "types")

    def __init__(self, drafts: Sequence[Draft], timestamp: str, claim: Claim | None) -> None:
        self.future: asyncio.Future[Appended] = asyncio.get_running_loop().create_future()
        self.claim = claim
        self.types = [draft.type.encode() for draft in drafts]
        self.tails = [entry_tail(draft, timestamp) for draft in drafts]
        self.ids: list[bytes] = []
        self.skipped = 0
        self.last: StreamId = (0, 0)
        self.slots: dict[str, int] = {}
        self.records: list[Record | None] = []
        self.missing = 0

    def __len__(self) -> int:
        return len(self.tails)

    def stored(self, outcome: Outcome) -> bool:
        """Note what Redis did with the entries; True if it stored any (the reader will deliver them)."""
        if outcome.conflict or outcome.replayed is not None or not outcome.ids:
            # Nothing stored: answered now (what a key or a producer repeats is in Redis already).
            if self.claim is not None and outcome.conflict:
                self.future.set_exception(key_reused(self.claim.key or ""))
            elif not self.future.done():
                self.future.set_result(Appended(skipped=outcome.skipped, replayed=outcome.replayed))
            return False
        self.ids = outcome.ids
        self.skipped = outcome.skipped
        self.last = parse_stream_id(self.ids[-1].decode()) or (0, 0)
        self.slots = {entry_id.decode(): index for index, entry_id in enumerate(self.ids)}
        self.records = [None] * len(self.ids)
        self.missing = len(self.ids)
        return True

    def match(self, delivered: Record) -> None:
        """Take ``delivered`` as the record of one of the entries."""
        index = self.slots.get(delivered.id)
        if index is not None and self.records[index] is None:
            self.records[index] = delivered
            self.missing -= 1

    def settle(self) -> None:
        """Answer with the records delivered, and for an entry this bus did not read (it lost
        Redis meanwhile, or Redis trimmed it first), a record built from what was sent: it is stored."""
        skip = self.skipped
        records = [
            delivered or record(self.ids[i], self.types[skip + i], self.tails[skip + i])
            for i, delivered in enumerate(self.records)
        ]
        if not self.future.done():
            self.future.set_result(Appended(records, skipped=skip))


class AppendTracker:
    """Appends stored but not all delivered yet, by id and in stream order.

    ``position`` is where the reader has read to: an append whose last id is behind
    it will see no more of its entries, and is answered.
    """

    def __init__(self, position: Callable[[], StreamId]) -> None:
        self._position = position
        self._expected: dict[str, Append] = {}
        self._waiting: deque[Append] = deque()
        self._writing = False
        self._read_while_writing: list[Record] = []

    def futures(self) -> list[asyncio.Future[Appended]]:
        """The answers still to come."""
        return [append.future for append in self._waiting]

    def writing(self) -> None:
        """A write is in flight: keep what the reader delivers meanwhile."""
        self._writing = True

    def written(self, batch: list[Append], outcomes: list[Outcome] | None) -> None:
        """The write of ``batch`` did ``outcomes`` (None: it failed); match what was read meanwhile."""
        self._writing = False
        read, self._read_while_writing = self._read_while_writing, []
        if outcomes is None:
            return
        for append, outcome in zip(batch, outcomes, strict=True):
            if append.stored(outcome):
                self._expected.update(dict.fromkeys(append.slots, append))
                self._waiting.append(append)
        self._match(read)

    def delivered(self, records: list[Record]) -> None:
        """The reader delivered ``records``: answer the appends they complete."""
        if self._writing:
            self._read_while_writing.extend(records)
        if self._waiting:
            self._match(records)

    def _match(self, records: list[Record]) -> None:
        expected = self._expected
        if expected:
            for delivered in records:
                append = expected.pop(delivered.id, None)
                if append is not None:
                    append.match(delivered)
        waiting = self._waiting
        position = self._position()
        while waiting and (not waiting[0].missing or waiting[0].last <= position):
            # Past an append's last id, an entry not read was trimmed before this bus got to it.
            append = waiting.popleft()
            for entry_id in append.slots:
                expected.pop(entry_id, None)
            append.settle()

    def settle_all(self) -> None:
        """Answer every append now (the reader lost Redis, or the store closes): what was stored, was stored."""
        for append in self._waiting:
            append.settle()
        self._waiting.clear()
        self._expected.clear()
