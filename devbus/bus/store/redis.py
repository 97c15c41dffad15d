"""The Redis store (``--store redis://host:port/db``): one Redis Stream shared by every bus on it.

Keys, under ``--store-key`` K (default ``devbus``, so that buses sharing one
Redis without sharing events use different keys):

``K:events``
    The stream: the log. Every bus appends to it and reads all of it, so every
    bus delivers every event, whoever accepted it, in the stream's order. Its
    entries are laid out as ``redis_codec`` says; the ids are the stream's.
    Trimmed to ``--history`` entries after each append (exact trimming measured
    no slower than ``MAXLEN ~`` here, with one XTRIM per batch). Redis cannot
    trim by size: ``--history-bytes`` does not apply to it.
``K:meta``
    ``format`` (of the entries, checked at start) and ``run`` (the log's
    identity: a new one means Redis lost the stream).

A bus answers an append only once Redis has it (the batch in one Lua call: one
round trip, contiguous in the stream, all or nothing) and its own reader
(``redis_reader``) has delivered it (``redis_appends``), so the answer can say
whom the events reached and a read of this bus right after sees them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import socket
from collections.abc import Sequence
from typing import Any, cast

from devbus.bus.record import Deliver, Record
from devbus.bus.store.base import Resume, Store
from devbus.bus.store.redis_appends import Append, AppendTracker
from devbus.bus.store.redis_codec import APPEND_SCRIPT, FORMAT, Entry, append_argument
from devbus.bus.store.redis_link import FAILURES, Link
from devbus.bus.store.redis_reader import StreamReader
from devbus.bus.store.redis_reads import StreamReads
from devbus.bus.store.redis_shared import SharedStream
from devbus.bus.store.sequence import new_run
from devbus.envelope import Draft
from devbus.errors import ConfigError

__all__ = ["DEFAULT_KEY", "RedisStore"]

log = logging.getLogger(__name__)

DEFAULT_KEY = "devbus"
MIN_VERSION = (6, 2)  # XAUTOCLAIM, exclusive XRANGE bounds
SCRIPT_EVENTS = 5000  # appends joined into one Lua call (a larger single batch still goes whole)
CLOSE_TIMEOUT = 2.0
REFRESH_TIMEOUT = 0.5  # longest health or /metrics waits for Redis to count the stream


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
        self._queue: list[Append] = []
        self._writer: asyncio.Task[None] | None = None
        self._appends = AppendTracker(lambda: self._reader.position)
        self._reader = StreamReader(
            self._link, self._stream, history=history, tracker=self._appends, reconnected=self._meta_values
        )
        self._reads = StreamReads(self._link, self._stream, reader=self._reader)
        self._append_script = self._link.redis.register_script(APPEND_SCRIPT)

    @property
    def run(self) -> str:
        return self._run

    @property
    def last_id(self) -> str | None:
        return self._reader.head

    def __len__(self) -> int:
        return min(self._reader.length, self._history)

    async def refresh(self) -> None:
        """Count what the stream holds now: Redis may have lost its data (FLUSHALL, a restart without persistence)."""
        if not self._link.up:
            return  # the reader is reconnecting; health says the store is down
        with contextlib.suppress(TimeoutError, *FAILURES):
            async with asyncio.timeout(REFRESH_TIMEOUT):
                self._reader.length = await self._link.redis.xlen(self._stream)

    def status(self) -> dict[str, Any]:
        return {"name": self.name, "key": self.key, "retained": len(self), **self._link.status()}

    def shared_stream(self) -> SharedStream:
        """The handle other buses' readers of this stream get (a cluster-wide --forward)."""
        return SharedStream(redis=self._link.redis, stream=self._stream, key=self.key, consumer=self.consumer)

    async def open(self, deliver: Deliver) -> None:
        try:
            head, length = await self._check()
        except FAILURES as exc:
            await self._link.close()
            raise ConfigError(
                f"Cannot use the store {self.name} ({type(exc).__name__}: {exc}): start Redis there or fix --store"
            ) from exc
        except ConfigError:
            await self._link.close()
            raise
        self._reader.start(deliver, head=head, length=length)

    async def _check(self) -> tuple[str | None, int]:
        """Check the server, the key and the format; return the newest id and the length of the stream."""
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
        return (newest[0][0].decode() if newest else None), await redis.xlen(self._stream)

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
                waits = self._appends.futures()
                if waits:
                    await asyncio.wait(waits)
        for append in self._queue:
            append.future.set_exception(self._link.unavailable())
        self._queue.clear()
        self._appends.settle_all()
        await self._reader.stop()
        await self._link.close()

    # Appending --------------------------------------------------------------

    def append(self, drafts: Sequence[Draft], timestamp: str) -> asyncio.Future[list[Record]]:
        append = Append(drafts, timestamp)
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
            batch: list[Append] = []
            size = 0
            while self._queue and (not batch or size + len(self._queue[0]) <= SCRIPT_EVENTS):
                append = self._queue.pop(0)
                batch.append(append)
                size += len(append)
            entries = (pair for append in batch for pair in zip(append.types, append.tails, strict=True))
            self._appends.writing()
            try:
                ids = await self._append_script(keys=[self._stream], args=[self._history, append_argument(entries)])
            except FAILURES as exc:
                self._appends.written(batch, None)
                error = self._reader.failed(exc)
                for append in batch + self._queue:
                    append.future.set_exception(error)
                self._queue.clear()
                return
            except BaseException:
                self._appends.written(batch, None)
                raise
            self._appends.written(batch, ids)

    # Cursors ------------------------------------------------------------------

    async def resolve(self, event_id: str) -> Resume:
        return await self._reads.resolve(event_id)

    async def read_after(self, after: str, *, limit: int, max_bytes: int) -> list[Record]:
        return await self._reads.read_after(after, limit=limit, max_bytes=max_bytes)

    async def read_before(self, before: str | None, *, limit: int, max_bytes: int) -> list[Record]:
        return await self._reads.read_before(before, limit=limit, max_bytes=max_bytes)
