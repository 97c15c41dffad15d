"""The Redis store's cursor reads: where a client resumes, and bounded pages of the stream.

A resume (``Last-Event-ID``, ``?since=``) and ``GET /history`` read here, never
past what this bus has delivered (``StreamReader.head``), so a cursor hands over
to the live fan-out with no duplicate. Every read is refused at once while the
store is known to be away, and bounded in time while Redis hangs, so that a view
can answer ``503`` before it sends a byte of its ``200`` (``READ_TIMEOUT``).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from functools import partial
from typing import Any, TypeVar, cast

from devbus.bus.record import Record
from devbus.bus.store.base import Resume
from devbus.bus.store.redis_codec import Entry, records_of
from devbus.bus.store.redis_link import FAILURES, Link, StreamId, format_stream_id, id_before, parse_stream_id
from devbus.bus.store.redis_reader import READ_COUNT, StreamReader
from devbus.errors import StoreUnavailable

__all__ = ["READ_TIMEOUT", "StreamReads"]

# Seconds one read may take before the store counts as away. A read is one small page,
# which a healthy Redis answers in milliseconds; a client whose resume meets a Redis that
# hangs (a stopped process) gets its 503 after this, not after the socket's 10 s per call.
READ_TIMEOUT = 5.0

T = TypeVar("T")


def _first_id(entries: list[Entry]) -> StreamId | None:
    return parse_stream_id(entries[0][0].decode()) if entries else None


class StreamReads:
    """Resolve ids and read pages of the stream for cursors."""

    def __init__(self, link: Link, stream: str, *, reader: StreamReader) -> None:
        self._link = link
        self._stream = stream
        self._reader = reader

    async def resolve(self, event_id: str) -> Resume:
        """Resume right after ``event_id`` if the stream holds everything after it, else a gap."""
        wanted = parse_stream_id(event_id)

        async def ends_and_wanted() -> list[Any]:
            async with self._link.redis.pipeline(transaction=True) as pipe:
                pipe.xrange(self._stream, count=1)
                pipe.xrevrange(self._stream, count=1)
                if wanted is not None:
                    at = format_stream_id(wanted)
                    pipe.xrange(self._stream, at, at, count=1)
                return await pipe.execute()

        oldest, newest, *found = await self._ask(ends_and_wanted)
        first, last = _first_id(oldest), _first_id(newest)
        if first is None or last is None:
            return Resume(after=self._reader.head or "0-0", gap=True)
        # Stream ids are times, so an id of another --store-key, or of a stream Redis lost,
        # looks like one of this stream's. Only an entry the stream holds, or the id just
        # before its oldest entry (where a gap event tells a client to resume), says that
        # the client misses nothing between it and the newest entry.
        if wanted is not None and (any(found) or wanted == id_before(first)):
            if await self._reader.reached(wanted):
                return Resume(after=event_id, gap=False)
            if not self._link.up:
                raise self._unavailable()
        return Resume(after=format_stream_id(id_before(first)), gap=True)

    async def read_after(self, after: str, *, limit: int, max_bytes: int) -> list[Record]:
        """The records after ``after``, oldest first, up to what this bus has delivered."""
        head = self._reader.head
        start = parse_stream_id(after)
        if head is None or start is None or start >= (parse_stream_id(head) or (0, 0)):
            # Nothing delivered past ``after``: no need to ask Redis, but yield like a read that
            # does, so that a caller polling for new records lets the reader deliver them.
            await asyncio.sleep(0)
            return []
        return await self._page(f"({after}", head, limit=limit, max_bytes=max_bytes, newest_first=False)

    async def read_before(self, before: str | None, *, limit: int, max_bytes: int) -> list[Record]:
        """The newest records before ``before`` (None: this bus's head), oldest first."""
        head = self._reader.head
        if head is None:
            await asyncio.sleep(0)  # as in read_after
            return []
        end = head
        if before is not None:
            bound = parse_stream_id(before)
            if bound is None:
                return []
            if bound <= (parse_stream_id(head) or (0, 0)):
                end = f"({before}"
        page = await self._page(end, "-", limit=limit, max_bytes=max_bytes, newest_first=True)
        page.reverse()
        return page

    async def _page(self, start: str, end: str, *, limit: int, max_bytes: int, newest_first: bool) -> list[Record]:
        """Read up to ``limit`` records or ``max_bytes`` of JSON, a few at a time so large events cost little."""
        redis = self._link.redis
        command = redis.xrevrange if newest_first else redis.xrange
        page: list[Record] = []
        size = 0
        while len(page) < limit:
            count = max(1, min(limit - len(page), (max_bytes - size) // self._reader.record_size + 1, READ_COUNT))
            entries = cast(list[Entry], await self._ask(partial(command, self._stream, start, end, count=count)))
            for record in records_of(self._reader.checker, entries):
                size += len(record.json)
                if page and size > max_bytes:
                    return page
                page.append(record)
                if len(page) >= limit:
                    return page
            if len(entries) < count:
                return page
            # Go on past the last entry read: ``start`` is where reading starts, either way.
            start = f"({entries[-1][0].decode()}"
        return page

    async def _ask(self, read: Callable[[], Awaitable[T]]) -> T:
        """One read: refused at once while Redis is away, and bounded while it hangs."""
        if not self._link.up:
            raise self._unavailable()
        try:
            async with asyncio.timeout(READ_TIMEOUT):
                return await read()
        except TimeoutError as exc:
            self._reader.failed(TimeoutError(f"no answer within {READ_TIMEOUT:g}s"))
            raise self._unavailable() from exc
        except FAILURES as exc:
            self._reader.failed(exc)
            raise self._unavailable() from exc

    def _unavailable(self) -> StoreUnavailable:
        return StoreUnavailable(
            f"The store {self._link.name} is unreachable ({self._link.error}); "
            "history cannot be read until it is back, so try again in a moment"
        )
