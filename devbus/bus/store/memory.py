"""The memory store: the newest events of this run in a deque, gone when the bus stops."""

from __future__ import annotations

import asyncio
import itertools
from collections import deque
from collections.abc import Sequence

from devbus.bus.record import Deliver, Record
from devbus.bus.store.base import Appended, Claim, Resume, Store
from devbus.bus.store.claims import Claims
from devbus.bus.store.sequence import format_id, new_run, number, parse_id, resume, take_page
from devbus.envelope import Draft
from devbus.errors import KeyReused

__all__ = ["MemoryStore"]


class MemoryStore(Store):
    """The newest ``history`` records (and at most ``history_bytes`` of JSON), oldest first.

    Invariant: retained records hold consecutive seqs, ``_first_seq`` to ``_seq``,
    so that finding the record after an id is index arithmetic. Appending commits
    and delivers at once, before the returned (already resolved) future is awaited.
    """

    name = "memory"

    def __init__(self, *, history: int, history_bytes: int | None = None) -> None:
        self._run = new_run()
        self._records: deque[Record] = deque()
        self._maxlen = history
        # Count alone would let 10,000 events of 1 MiB each hold 10 GiB.
        self._max_bytes = history_bytes
        self._bytes = 0
        self._seq = 0
        self._deliver: Deliver | None = None
        self._claims = Claims()

    @property
    def run(self) -> str:
        """A fresh identity per process: ids of an earlier run resume with a gap."""
        return self._run

    @property
    def last_id(self) -> str | None:
        """The id of the newest record, None before the first."""
        return format_id(self._run, self._seq) if self._seq else None

    def __len__(self) -> int:
        return len(self._records)

    @property
    def size(self) -> int:
        """Bytes of JSON retained."""
        return self._bytes

    async def open(self, deliver: Deliver) -> None:
        """Start delivering appended records to ``deliver``."""
        self._deliver = deliver

    async def close(self) -> None:
        """Stop delivering; what is retained is dropped with the store."""
        self._deliver = None

    def append(self, drafts: Sequence[Draft], timestamp: str, claim: Claim | None = None) -> asyncio.Future[Appended]:
        """Number, retain and deliver the ``drafts`` that ``claim`` lets through now; the future is already resolved."""
        future: asyncio.Future[Appended] = asyncio.get_running_loop().create_future()
        skipped = 0
        if claim is not None:
            try:
                skipped, replayed = self._claims.check(claim)
            except KeyReused as exc:
                future.set_exception(exc)
                return future
            if replayed is not None:
                future.set_result(Appended(replayed=replayed))
                return future
            drafts = drafts[skipped:]
        records = number(self._run, self._seq + 1, drafts, timestamp)
        if claim is not None and records:
            self._claims.record(claim, records, [])
        self._seq += len(records)
        retained = self._records
        retained.extend(records)
        size = self._bytes
        for record in records:
            size += len(record.json)
        for _ in range(len(retained) - self._maxlen):
            size -= len(retained.popleft().json)
        if self._max_bytes is not None:
            while size > self._max_bytes and len(retained) > 1:
                size -= len(retained.popleft().json)
        self._bytes = size
        if self._deliver is not None and records:
            self._deliver(records)
        # The outputs have used the envelopes; what --history-bytes bounds is the JSON kept.
        for record in records:
            record.drop_event()
        future.set_result(Appended(records, skipped=skipped))
        return future

    async def producer_seq(self, producer: str) -> int:
        """The last seq stored for ``producer`` in this run."""
        return self._claims.seq(producer)

    def _first_seq(self) -> int | None:
        return self._seq - len(self._records) + 1 if self._records else None

    async def resolve(self, event_id: str) -> Resume:
        """Resume after ``event_id`` if it is this run's and nothing after it was dropped, else a gap."""
        return resume(self._run, event_id, first=self._first_seq(), last=self._seq)

    def _index_after(self, after: str) -> int:
        parsed = parse_id(after)
        first = self._first_seq()
        if parsed is None or parsed[0] != self._run or first is None:
            return 0 if parsed is None or parsed[0] != self._run else len(self._records)
        return min(max(0, parsed[1] + 1 - first), len(self._records))

    async def read_after(self, after: str, *, limit: int, max_bytes: int) -> list[Record]:
        """A page of the records after ``after``, oldest first (from the oldest if ``after`` is not ours)."""
        start = self._index_after(after)
        return take_page(itertools.islice(self._records, start, None), limit=limit, max_bytes=max_bytes)

    async def read_before(self, before: str | None, *, limit: int, max_bytes: int) -> list[Record]:
        """A page of the newest records before ``before`` (None: the newest), oldest first."""
        end = len(self._records) if before is None else self._index_after(before) - 1
        if end <= 0:
            return []
        newest = itertools.islice(reversed(self._records), len(self._records) - end, None)
        page = take_page(newest, limit=limit, max_bytes=max_bytes)
        page.reverse()
        return page
