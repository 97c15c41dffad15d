"""The Redis store's reader: every entry of the stream delivered in order, through outages.

One task reads the stream with XREAD from where it stopped, for as long as the
store is open, and hands each page, checked (``checked.py``: an entry that is
not an event is skipped and counted), to ``deliver`` (the dispatcher) and to the
append tracker (which answers this bus's appends). When Redis fails it waits for
the one reconnecting task, then goes on from the same position, so nothing is
skipped or delivered twice. The task is supervised (``supervised.py``): if it
fails for any other reason it is started again, from the same position, and
health says so. Cursors that resume at an id another bus gave wait here until
this bus has read that far (:meth:`StreamReader.reached`).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import cast

from devbus.bus.record import Deliver, Record
from devbus.bus.store.checked import Checker
from devbus.bus.store.redis_appends import AppendTracker
from devbus.bus.store.redis_codec import Entry, raw_reply, read_reply
from devbus.bus.store.redis_link import FAILURES, Link, StreamId, format_stream_id, parse_stream_id
from devbus.bus.store.supervised import Supervised, stop_task
from devbus.errors import StoreUnavailable

__all__ = ["StreamReader"]

log = logging.getLogger(__name__)

READ_COUNT = 2000  # entries per XREAD of the stream
READ_BLOCK_MS = 2000  # an idle XREAD returns after this long (shorter than the link's socket timeout)
BACKOFF_FIRST = 0.05
BACKOFF_MAX = 2.0
CATCH_UP = 5.0  # seconds a resume waits for this bus to read an id another bus gave


class StreamReader:
    """Deliver the stream's entries in order, keep where reading stands, and reconnect after failures."""

    def __init__(
        self,
        link: Link,
        stream: str,
        *,
        history: int,
        tracker: AppendTracker,
        checker: Checker,
        reconnected: Callable[[], Awaitable[object]],
    ) -> None:
        self._link = link
        self.checker = checker
        self._stream = stream
        self._history = history
        self._tracker = tracker
        self._reconnected = reconnected  # checks the store again once Redis answers
        self.head: str | None = None  # the newest id delivered
        self.position: StreamId = (0, 0)  # where reading goes on
        self.length = 0
        self.record_size = 256  # running mean of a record's JSON, to size page reads
        self._deliver: Deliver | None = None
        self._behind = False  # entries were trimmed before this bus read them
        self._watchers: list[tuple[StreamId, asyncio.Future[None]]] = []
        self.task = Supervised(f"the reader of {link.name}", self._read)
        self._recovering: asyncio.Task[None] | None = None
        # Only the reader sends XREAD on this client (forwarding reads with Lua calls, cursors with XRANGE).
        link.redis.set_response_callback("XREAD", raw_reply)

    def start(self, deliver: Deliver, *, head: str | None, length: int) -> None:
        """Deliver every entry after ``head`` (the newest when the store opened) from now on."""
        self._deliver = deliver
        self.head = head
        self.position = (parse_stream_id(head) if head is not None else None) or (0, 0)
        self.length = length
        self.task.start()

    async def stop(self) -> None:
        """Stop reading and reconnecting."""
        await self.task.stop()
        if self._recovering is not None:
            await stop_task(self._recovering)

    def failed(self, exc: BaseException) -> StoreUnavailable:
        """Note a failed call (logged once per outage), start reconnecting, and return the error for senders."""
        error = self._link.failed(exc)
        self._recover()
        return error

    def recovering(self) -> asyncio.Task[None]:
        """The task that reconnects (started if none runs): done once Redis answers again."""
        return self._recover()

    def _recover(self) -> asyncio.Task[None]:
        """The one task that reconnects after a failure (the reader waits for it; senders get 503 meanwhile)."""
        if self._recovering is None or self._recovering.done():
            self._recovering = asyncio.create_task(self._reconnect(), name=f"reconnect {self._link.name}")
        return self._recovering

    async def _reconnect(self) -> None:
        delay = BACKOFF_FIRST
        while True:
            await asyncio.sleep(delay)
            try:
                # Idle connections may lead to a Redis that is gone: their first command would fail.
                await self._link.redis.connection_pool.disconnect(inuse_connections=False)
                await self._link.redis.ping()
                await self._reconnected()
            except FAILURES as exc:
                self._link.failed(exc)
                delay = min(delay * 2, BACKOFF_MAX)
                continue
            self._link.recovered()
            return

    async def _read(self) -> None:
        """Deliver every entry of the stream in order, forever; after a failure, from where it stopped."""
        redis = self._link.redis
        while True:
            if not self._link.up:
                await asyncio.shield(self._recover())
            try:
                position = format_stream_id(self.position)
                reply = await redis.xread({self._stream: position}, count=READ_COUNT, block=READ_BLOCK_MS)
            except FAILURES as exc:
                self.failed(exc)
                # What was stored before Redis went away is acknowledged as stored.
                self._tracker.settle_all()
                continue
            read = read_reply(self.checker, reply)
            if read is not None:
                last, records = read
                before = self.position
                try:
                    self._take(last, records)
                except Exception:
                    # A bug must not stop delivery for good: say so, skip the page and go on.
                    log.exception("could not deliver %d entries of %s", len(records), self._stream)
                # Only a full page can start past trimmed entries: the stream holds at most
                # --history entries, so with --history under READ_COUNT no page reaches READ_COUNT.
                if len(records) >= min(READ_COUNT, self._history):
                    await self._check_behind(before, records[0].id.encode())
                else:
                    self._behind = False

    async def _check_behind(self, before: StreamId, first: bytes) -> None:
        """Say so (once) if this bus fell so far behind the stream that entries were trimmed before it read them."""
        try:
            oldest = cast(list[Entry], await self._link.redis.xrange(self._stream, count=1))
        except FAILURES:
            return  # the next read notices
        # The page began at the oldest entry left (or trimming has passed it since): every entry up
        # to where this bus was is gone, so it is --history entries behind, and what lay between
        # them, if anything, is gone too. (Checked after the read: an XREAD that blocks cannot
        # also ask for the oldest entry in one call.)
        trimmed = (
            bool(oldest)
            and before != (0, 0)
            and (parse_stream_id(oldest[0][0].decode()) or (0, 0)) >= (parse_stream_id(first.decode()) or (0, 0))
        )
        if trimmed and not self._behind:
            log.warning(
                "this bus fell --history (%d) events behind %s: events trimmed before it read them are not "
                "delivered here (raise --history above the largest burst)",
                self._history,
                self._link.name,
            )
        self._behind = trimmed

    def _take(self, last: bytes, records: list[Record]) -> None:
        self.position = parse_stream_id(last.decode()) or self.position
        if not records:
            return
        self.head = records[-1].id
        self.length += len(records)
        size = sum(len(record.json) for record in records) // len(records)
        self.record_size = max(64, (self.record_size * 7 + size) // 8)
        assert self._deliver is not None
        self._deliver(records)
        self._tracker.delivered(records)
        if self._watchers:
            self._wake_watchers()

    def _wake_watchers(self) -> None:
        waiting = []
        for target, future in self._watchers:
            if target <= self.position:
                if not future.done():
                    future.set_result(None)
            else:
                waiting.append((target, future))
        self._watchers = waiting

    async def reached(self, target: StreamId) -> bool:
        """Wait until this bus has delivered ``target``; False if that takes longer than CATCH_UP."""
        if target <= self.position:
            return True
        future = asyncio.get_running_loop().create_future()
        self._watchers.append((target, future))
        try:
            async with asyncio.timeout(CATCH_UP):
                await future
        except TimeoutError:
            return False
        return True
