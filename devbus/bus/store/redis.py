"""The Redis store (``--store redis://host:port/db``): one Redis Stream shared by every bus on it.

Keys, under ``--store-key`` K (default ``devbus``, so that buses sharing one
Redis without sharing events use different keys):

``K:events``
    The stream: the log. Every bus appends to it and reads all of it, so every
    bus delivers every event, whoever accepted it, in the stream's order. An
    entry is ``{t: type, j: JSON}`` where ``j`` is the envelope's JSON after
    its id: the event's JSON is ``{"id":"<entry id>",`` + ``j``, so the ids are
    the stream's and a client resumes at any bus with the id it has. Trimmed to
    ``--history`` entries after each append (exact trimming measured no slower
    than ``MAXLEN ~`` here, with one XTRIM per batch). Redis cannot trim by size:
    ``--history-bytes`` does not apply to it.
``K:meta``
    ``format`` (of the entries, checked at start) and ``run`` (the log's
    identity: a new one means Redis lost the stream).

A bus answers an append only once Redis has it (the batch in one Lua call: one
round trip, contiguous in the stream, all or nothing) and its own reader has
delivered it, so the answer counts the subscribers it reached and a read of this
bus right after sees it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import socket
from collections import deque
from collections.abc import AsyncIterator, Callable, Sequence
from typing import TYPE_CHECKING, Any, cast

from redis.asyncio import Redis

from devbus.bus.store.base import Deliver, Record, Resume, Store
from devbus.bus.store.redis_link import FAILURES, Link, StreamId, format_stream_id, id_before, parse_stream_id
from devbus.bus.store.sequence import new_run
from devbus.envelope import Draft, Event, encode_json
from devbus.errors import ConfigError, StoreUnavailable

if TYPE_CHECKING:
    from aiohttp import web

    from devbus.bus.outputs.forward import Forwarder

__all__ = ["DEFAULT_KEY", "Entry", "RedisStore", "records_of"]

log = logging.getLogger(__name__)

DEFAULT_KEY = "devbus"
FORMAT = "1"
MIN_VERSION = (6, 2)  # XAUTOCLAIM, exclusive XRANGE bounds
READ_COUNT = 2000  # entries per XREAD of the stream
READ_BLOCK_MS = 2000  # an idle XREAD returns after this long (shorter than SOCKET_TIMEOUT)
SCRIPT_EVENTS = 5000  # appends joined into one Lua call (a larger single batch still goes whole)
BACKOFF_FIRST = 0.05
BACKOFF_MAX = 2.0
CATCH_UP = 5.0  # seconds a resume waits for this bus to read an id another bus gave
CLOSE_TIMEOUT = 2.0
REFRESH_TIMEOUT = 0.5  # longest health or /metrics waits for Redis to count the stream

_NO_ID = b'{"id":"",'  # how an envelope's JSON starts when its id is empty

# ARGV: the length to trim to, then every entry's type and JSON, each followed by a
# newline (neither can hold one: types have no whitespace, compact JSON escapes it).
# One argument instead of two per event: redis-py packs each argument in Python, and
# at a few hundred events per call that cost more than Redis spends on the XADDs.
# Returns the new ids.
_APPEND = """
local batch, newline, ids = ARGV[2], string.char(10), {}
local at = 1
while at <= #batch do
  local type_end = string.find(batch, newline, at, true)
  local json_end = string.find(batch, newline, type_end + 1, true)
  local t, j = string.sub(batch, at, type_end - 1), string.sub(batch, type_end + 1, json_end - 1)
  ids[#ids + 1] = redis.call('XADD', KEYS[1], '*', 't', t, 'j', j)
  at = json_end + 1
end
redis.call('XTRIM', KEYS[1], 'MAXLEN', '=', ARGV[1])
return ids
"""


def _tail(draft: Draft, timestamp: str) -> bytes:
    """The envelope's JSON after its id, which Redis gives at append."""
    event = Event(id="", type=draft.type, data=draft.data, timestamp=timestamp, source=draft.source)
    return encode_json(event)[len(_NO_ID) :]


# A stream entry as redis-py returns it (bytes, as no decoding is asked for; no fields if trimmed).
Entry = tuple[bytes, dict[bytes, bytes] | None]


def _record(entry_id: bytes, event_type: bytes, tail: bytes) -> Record:
    return Record(entry_id.decode(), event_type.decode(), b'{"id":"' + entry_id + b'",' + tail)


def records_of(entries: list[Entry]) -> list[Record]:
    """The records of ``entries``, skipping any that devbus did not write (or Redis trimmed: no fields)."""
    records = []
    for entry_id, fields in entries:
        if not fields:
            continue
        event_type, tail = fields.get(b"t"), fields.get(b"j")
        if event_type is not None and tail is not None:
            records.append(_record(entry_id, event_type, tail))
    return records


def _read_records(reply: Any) -> tuple[bytes, list[Record]] | None:
    """The last id and the records of an XREAD reply as Redis sent it (see ``_raw_xread``)."""
    if not reply:
        return None
    # RESP3 answers a map of stream to entries, RESP2 a list of [stream, entries].
    [entries] = reply.values() if isinstance(reply, dict) else [stream[1] for stream in reply]
    records = []
    for entry_id, fields in entries:
        # Fields as _APPEND writes them: t, type, j, JSON.
        if len(fields) == 4 and fields[0] == b"t" and fields[2] == b"j":
            records.append(_record(entry_id, fields[1], fields[3]))
    return entries[-1][0], records


def _raw_xread(response: Any, **options: Any) -> Any:
    # redis-py would turn each entry into a tuple and a dict; the reader reads every
    # entry of the stream, and that costs more than the rest of taking it in.
    return response


def _first_id(entries: list[Entry]) -> StreamId | None:
    return parse_stream_id(entries[0][0].decode()) if entries else None


class _Append:
    """One append call: its entries, then their ids, then the records this bus delivered for them."""

    __slots__ = ("future", "ids", "last", "missing", "records", "slots", "tails", "types")

    def __init__(self, drafts: Sequence[Draft], timestamp: str) -> None:
        self.future: asyncio.Future[list[Record]] = asyncio.get_running_loop().create_future()
        self.types = [draft.type.encode() for draft in drafts]
        self.tails = [_tail(draft, timestamp) for draft in drafts]
        self.ids: list[bytes] = []
        self.last: StreamId = (0, 0)
        self.slots: dict[str, int] = {}
        self.records: list[Record | None] = []
        self.missing = 0

    def stored(self, ids: list[bytes]) -> None:
        self.ids = ids
        self.last = parse_stream_id(ids[-1].decode()) or (0, 0)
        self.slots = {entry_id.decode(): index for index, entry_id in enumerate(ids)}
        self.records = [None] * len(ids)
        self.missing = len(ids)

    def match(self, record: Record) -> None:
        index = self.slots.get(record.id)
        if index is not None and self.records[index] is None:
            self.records[index] = record
            self.missing -= 1

    def settle(self) -> None:
        # An entry this bus did not read (it lost Redis meanwhile) is still stored:
        # answer with a record built from what was sent.
        records = [
            record or _record(self.ids[i], self.types[i], self.tails[i]) for i, record in enumerate(self.records)
        ]
        if not self.future.done():
            self.future.set_result(records)


class RedisStore(Store):
    """A Redis Stream as the bus's log; see the module docstring."""

    def __init__(self, url: str, *, key: str = DEFAULT_KEY, history: int, history_bytes: int) -> None:
        self._link = Link(url)
        self.name = self._link.name
        self.key = key
        self._stream = f"{key}:events"
        self._meta = f"{key}:meta"
        self.consumer = f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(3)}"
        self._history = history
        self._run = ""
        self._head: str | None = None  # the newest id delivered
        self._position: StreamId = (0, 0)  # where the reader goes on
        self._length = 0
        self._record_size = 256  # running mean of a record's JSON, to size page reads
        self._deliver: Deliver | None = None
        self._queue: list[_Append] = []
        self._writer: asyncio.Task[None] | None = None
        self._writing = False
        self._read_while_writing: list[Record] = []
        # Appends stored but not all read back yet: by id, and in stream order.
        self._expected: dict[str, _Append] = {}
        self._waiting: deque[_Append] = deque()
        self._watchers: list[tuple[StreamId, asyncio.Future[None]]] = []
        self._reader: asyncio.Task[None] | None = None
        self._behind = False  # the reader found entries trimmed before it read them
        self._recovering: asyncio.Task[None] | None = None
        self._append_script = self._link.redis.register_script(_APPEND)
        # Only the reader sends XREAD on this client (forward groups use XREADGROUP).
        self._link.redis.set_response_callback("XREAD", _raw_xread)

    @property
    def redis(self) -> Redis:
        """The client (for the forward groups that share this stream)."""
        return self._link.redis

    @property
    def stream(self) -> str:
        """The stream's key."""
        return self._stream

    @property
    def link(self) -> Link:
        """The connection and its up/down state."""
        return self._link

    @property
    def run(self) -> str:
        return self._run

    @property
    def last_id(self) -> str | None:
        return self._head

    def __len__(self) -> int:
        return min(self._length, self._history)

    async def refresh(self) -> None:
        """Count what the stream holds now: Redis may have lost its data (FLUSHALL, a restart without persistence)."""
        if not self._link.up:
            return  # the reader is reconnecting; health says the store is down
        with contextlib.suppress(TimeoutError, *FAILURES):
            async with asyncio.timeout(REFRESH_TIMEOUT):
                self._length = await self._link.redis.xlen(self._stream)

    def status(self) -> dict[str, Any]:
        return {"name": self.name, "key": self.key, "retained": len(self), **self._link.status()}

    def forward_feed(self, forwarder: Forwarder) -> Callable[[web.Application], AsyncIterator[None]]:
        from devbus.bus.store.redis_forward import ClusterFeed

        return ClusterFeed(self, forwarder).run

    async def open(self, deliver: Deliver) -> None:
        self._deliver = deliver
        try:
            await self._check()
        except FAILURES as exc:
            await self._link.close()
            raise ConfigError(
                f"Cannot use the store {self.name} ({type(exc).__name__}: {exc}): start Redis there or fix --store"
            ) from exc
        except ConfigError:
            await self._link.close()
            raise
        self._reader = asyncio.create_task(self._read(), name=f"read {self.name}")

    async def _check(self) -> None:
        redis = self._link.redis
        info = await redis.info("server")
        version = str(info.get("redis_version", "0"))
        numbers = tuple(int(part) for part in version.split(".")[:2] if part.isdigit())
        if numbers < MIN_VERSION:
            raise ConfigError(
                f"The store {self.name} runs Redis {version}; devbus needs Redis 6.2 or later (or Valkey)"
            )
        kind = cast(bytes, await redis.type(self._stream)).decode()
        if kind not in ("none", "stream"):
            raise ConfigError(
                f"The key {self._stream} on {self.name} holds a {kind}, not a stream: choose another --store-key"
            )
        found = await self._meta_values()
        if found != FORMAT:
            raise ConfigError(
                f"The events under {self.key}:* on {self.name} were written by another devbus version "
                f"(format {found}, this one reads {FORMAT}): choose another --store-key or delete those keys"
            )
        newest = cast(list[Entry], await redis.xrevrange(self._stream, count=1))
        if newest:
            self._head = newest[0][0].decode()
            self._position = parse_stream_id(self._head) or (0, 0)
        self._length = await redis.xlen(self._stream)

    async def _meta_values(self) -> str:
        """Create the meta hash if missing; note the run; return the format found."""
        async with self._link.redis.pipeline(transaction=True) as pipe:
            pipe.hsetnx(self._meta, "format", FORMAT)
            pipe.hsetnx(self._meta, "run", new_run())
            pipe.hmget(self._meta, ["format", "run"])
            *_, (found, run) = await pipe.execute()
        run = run.decode()
        if self._run and run != self._run:
            log.warning(
                "store %s lost its events (run %s is now %s); delivering what follows", self.name, self._run, run
            )
        self._run = run
        return str(found.decode())

    async def close(self) -> None:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(CLOSE_TIMEOUT):
                if self._writer is not None:
                    await self._writer
                waits = [append.future for append in self._waiting]
                if waits:
                    await asyncio.wait(waits)
        for append in self._queue:
            append.future.set_exception(self._link.unavailable())
        self._queue.clear()
        self._settle_all()
        for task in (self._reader, self._recovering):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        await self._link.close()

    # Appending --------------------------------------------------------------

    def append(self, drafts: Sequence[Draft], timestamp: str) -> asyncio.Future[list[Record]]:
        append = _Append(drafts, timestamp)
        if not self._link.up:
            # Refuse at once while the reader reconnects, instead of one timeout per sender.
            append.future.set_exception(self._link.unavailable())
            return append.future
        self._queue.append(append)
        if self._writer is None or self._writer.done():
            self._writer = asyncio.create_task(self._write(), name=f"write {self.name}")
        return append.future

    async def _write(self) -> None:
        # One call in flight at a time: calls stay in order, and what arrives
        # meanwhile goes in the next one.
        while self._queue:
            batch: list[_Append] = []
            size = 0
            while self._queue and (not batch or size + len(self._queue[0].tails) <= SCRIPT_EVENTS):
                append = self._queue.pop(0)
                batch.append(append)
                size += len(append.tails)
            lines: list[bytes] = []
            for append in batch:
                for pair in zip(append.types, append.tails, strict=True):
                    lines.extend(pair)
            lines.append(b"")
            self._writing = True
            try:
                ids = await self._append_script(keys=[self._stream], args=[self._history, b"\n".join(lines)])
            except FAILURES as exc:
                error = self._failed(exc)
                for append in batch + self._queue:
                    append.future.set_exception(error)
                self._queue.clear()
                return
            finally:
                self._writing = False
            start = 0
            for append in batch:
                append.stored(ids[start : start + len(append.tails)])
                start += len(append.tails)
                self._expected.update(dict.fromkeys(append.slots, append))
                self._waiting.append(append)
            # The reader may have delivered some of them before this reply came.
            read, self._read_while_writing = self._read_while_writing, []
            self._match(read)

    # Reading the stream -----------------------------------------------------

    async def _read(self) -> None:
        """Deliver every entry of the stream in order, forever; after a failure, from where it stopped."""
        redis = self._link.redis
        while True:
            if not self._link.up:
                await asyncio.shield(self._recover())
            try:
                position = format_stream_id(self._position)
                reply = await redis.xread({self._stream: position}, count=READ_COUNT, block=READ_BLOCK_MS)
            except FAILURES as exc:
                self._failed(exc)
                # What was stored before Redis went away is acknowledged as stored.
                self._settle_all()
                continue
            read = _read_records(reply)
            if read is not None:
                last, records = read
                before = self._position
                try:
                    self._take(last, records)
                except Exception:
                    # A bug must not stop delivery for good: say so, skip the page and go on.
                    log.exception("could not deliver %d entries of %s", len(records), self._stream)
                if len(records) >= READ_COUNT:
                    await self._check_behind(before, records[0].id.encode())
                else:
                    self._behind = False

    async def _check_behind(self, before: StreamId, first: bytes) -> None:
        """Say so (once) if this bus fell so far behind the stream that entries were trimmed before it read them."""
        try:
            oldest = cast(list[Entry], await self._link.redis.xrange(self._stream, count=1))
        except FAILURES:
            return  # the next read notices
        # The page began at the oldest entry left, well after where this bus was: what lay between is gone.
        trimmed = bool(oldest) and oldest[0][0] == first and before != (0, 0)
        if trimmed and not self._behind:
            log.warning(
                "this bus fell more than --history (%d) events behind %s: events trimmed before it read them "
                "were not delivered here (raise --history above the largest burst)",
                self._history,
                self.name,
            )
        self._behind = trimmed

    def _failed(self, exc: BaseException) -> StoreUnavailable:
        error = self._link.failed(exc)
        self._recover()
        return error

    def _recover(self) -> asyncio.Task[None]:
        """The one task that reconnects after a failure (the reader waits for it; senders get 503 meanwhile)."""
        if self._recovering is None or self._recovering.done():
            self._recovering = asyncio.create_task(self._reconnect(), name=f"reconnect {self.name}")
        return self._recovering

    async def _reconnect(self) -> None:
        delay = BACKOFF_FIRST
        while True:
            await asyncio.sleep(delay)
            try:
                # Idle connections may lead to a Redis that is gone: their first command would fail.
                await self._link.redis.connection_pool.disconnect(inuse_connections=False)
                await self._link.redis.ping()
                await self._meta_values()
            except FAILURES as exc:
                self._link.failed(exc)
                delay = min(delay * 2, BACKOFF_MAX)
                continue
            self._link.recovered()
            return

    def _take(self, last: bytes, records: list[Record]) -> None:
        self._position = parse_stream_id(last.decode()) or self._position
        if not records:
            return
        self._head = records[-1].id
        self._length += len(records)
        size = sum(len(record.json) for record in records) // len(records)
        self._record_size = max(64, (self._record_size * 7 + size) // 8)
        assert self._deliver is not None
        self._deliver(records)
        if self._writing:
            self._read_while_writing.extend(records)
        if self._waiting:
            self._match(records)
        if self._watchers:
            self._wake_watchers()

    def _match(self, records: list[Record]) -> None:
        """Answer the appends whose entries this bus has now delivered."""
        expected = self._expected
        if expected:
            for record in records:
                append = expected.pop(record.id, None)
                if append is not None:
                    append.match(record)
        waiting = self._waiting
        while waiting and (not waiting[0].missing or waiting[0].last <= self._position):
            # Past an append's last id, an entry not read was trimmed before this bus got to it.
            append = waiting.popleft()
            for entry_id in append.slots:
                expected.pop(entry_id, None)
            append.settle()

    def _settle_all(self) -> None:
        for append in self._waiting:
            append.settle()
        self._waiting.clear()
        self._expected.clear()

    def _wake_watchers(self) -> None:
        waiting = []
        for target, future in self._watchers:
            if target <= self._position:
                if not future.done():
                    future.set_result(None)
            else:
                waiting.append((target, future))
        self._watchers = waiting

    async def _reached(self, target: StreamId) -> bool:
        """Wait until the reader has delivered ``target``; False if it takes longer than CATCH_UP."""
        if target <= self._position:
            return True
        future = asyncio.get_running_loop().create_future()
        self._watchers.append((target, future))
        try:
            async with asyncio.timeout(CATCH_UP):
                await future
        except TimeoutError:
            return False
        return True

    # Cursors ------------------------------------------------------------------

    async def resolve(self, event_id: str) -> Resume:
        wanted = parse_stream_id(event_id)
        try:
            first = _first_id(cast(list[Entry], await self._link.redis.xrange(self._stream, count=1)))
            last = _first_id(cast(list[Entry], await self._link.redis.xrevrange(self._stream, count=1)))
        except FAILURES as exc:
            raise self._failed(exc) from exc
        if first is None or last is None:
            return Resume(after=self._head or "0-0", gap=True)
        # From the entry before the oldest retained one (nothing between them is
        # missing) to the newest, the client misses nothing.
        if wanted is not None and id_before(first) <= wanted <= last and await self._reached(wanted):
            return Resume(after=event_id, gap=False)
        return Resume(after=format_stream_id(id_before(first)), gap=True)

    async def read_after(self, after: str, *, limit: int, max_bytes: int) -> list[Record]:
        # Never past what this bus has delivered: the rest reaches a cursor live.
        head = self._head
        start = parse_stream_id(after)
        if head is None or start is None or start >= (parse_stream_id(head) or (0, 0)):
            # Nothing delivered past ``after``: no need to ask Redis, but yield like a read that
            # does, so that a caller polling for new records lets the reader deliver them.
            await asyncio.sleep(0)
            return []
        return await self._page(f"({after}", head, limit=limit, max_bytes=max_bytes, newest_first=False)

    async def read_before(self, before: str | None, *, limit: int, max_bytes: int) -> list[Record]:
        head = self._head
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
        page: list[Record] = []
        size = 0
        while len(page) < limit:
            count = max(1, min(limit - len(page), (max_bytes - size) // self._record_size + 1, READ_COUNT))
            try:
                if newest_first:
                    reply = await redis.xrevrange(self._stream, start, end, count=count)
                else:
                    reply = await redis.xrange(self._stream, start, end, count=count)
            except FAILURES as exc:
                raise self._failed(exc) from exc
            entries = cast(list[Entry], reply)
            for record in records_of(entries):
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
