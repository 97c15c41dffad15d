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

``K:producers``, ``K:keys``, ``K:calls`` (and their ``:seen`` sorted sets)
    What makes appends idempotent, checked and written in the append's own Lua
    call: see ``redis_script``.

A bus answers an append only once Redis has it (``redis_writer``: the batch in
one Lua call, one round trip, contiguous in the stream, all or nothing) and its own reader
(``redis_reader``) has delivered it (``redis_appends``), so the answer can say
whom the events reached and a read of this bus right after sees them. A call
whose answer was lost (Redis went away after it was sent) is sent again, with
the same token, once Redis answers: the answer then says what the first one did,
so the bus never stores a batch twice and never answers 503 for what is stored.
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

from redis.exceptions import RedisError

from devbus.bus.record import Deliver, Record
from devbus.bus.store.base import Appended, Claim, Resume, Store
from devbus.bus.store.checked import Checker
from devbus.bus.store.redis_appends import AppendTracker
from devbus.bus.store.redis_codec import FORMAT, Entry
from devbus.bus.store.redis_link import FAILURES, Link
from devbus.bus.store.redis_reader import StreamReader
from devbus.bus.store.redis_reads import StreamReads
from devbus.bus.store.redis_script import script_keys
from devbus.bus.store.redis_shared import SharedStream
from devbus.bus.store.redis_writer import AppendWriter
from devbus.bus.store.sequence import new_run
from devbus.envelope import Draft
from devbus.errors import ConfigError

__all__ = ["DEFAULT_KEY", "RedisStore", "WrongKeyType"]

log = logging.getLogger(__name__)

DEFAULT_KEY = "devbus"
MIN_VERSION = (6, 2)  # XAUTOCLAIM, exclusive XRANGE bounds
CLOSE_TIMEOUT = 2.0
REFRESH_TIMEOUT = 0.5  # longest health or /metrics waits for Redis to count the stream
# What each key under --store-key holds (see the module docstring and redis_script).
_KEY_TYPES = {
    "meta": "hash",
    "events": "stream",
    "producers": "hash",
    "producers:seen": "zset",
    "keys": "hash",
    "keys:seen": "zset",
    "calls": "hash",
    "calls:seen": "zset",
}


class WrongKeyType(RedisError):
    """A key of the store holds another type than devbus writes there: the store is down while it does."""


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
        self._appends = AppendTracker(lambda: self._reader.position)
        self._checker = Checker(self.name)
        self._reader = StreamReader(
            self._link,
            self._stream,
            history=history,
            tracker=self._appends,
            checker=self._checker,
            reconnected=self._meta_values,
        )
        self._writer = AppendWriter(
            self._link, self._reader, self._appends, key=key, history=history, bus=self.consumer
        )
        self._producers = f"{key}:producers"
        self._reads = StreamReads(self._link, self._stream, reader=self._reader)

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
        return {
            "name": self.name,
            "key": self.key,
            "retained": len(self),
            **self._link.status(),
            "reader": self._reader.task.status(),
            "skipped": self._checker.status(),
        }

    def shared_stream(self) -> SharedStream:
        """The handle other buses' readers of this stream get (a cluster-wide --forward)."""
        return SharedStream(
            redis=self._link.redis, stream=self._stream, key=self.key, consumer=self.consumer, checker=self._checker
        )

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
        try:
            found = await self._meta_values()
        except WrongKeyType as exc:
            raise ConfigError(f"{exc}: choose another --store-key") from exc
        if found != FORMAT:
            raise ConfigError(
                f"The events under {self.key}:* on {self.name} were written by another devbus version "
                f"(format {found}, this one reads {FORMAT}): choose another --store-key or delete those keys"
            )
        newest = cast(list[Entry], await redis.xrevrange(self._stream, count=1))
        return (newest[0][0].decode() if newest else None), await redis.xlen(self._stream)

    async def _meta_values(self) -> str:
        """Check that every key holds what devbus writes there; create the meta hash if missing; note the run;
        return the format found.

        Also what the reader checks once Redis answers again after a failure: a key that
        another program gave another type fails every call, and while it does the store
        stays down, logged once, instead of coming "back" between two failures (one such
        key logged about 190 lines in 10 s).
        """
        keys = [self._meta, *script_keys(self.key)]
        async with self._link.redis.pipeline(transaction=True) as pipe:
            for key in keys:
                pipe.type(key)
            kinds = await pipe.execute()
        for key, kind in zip(keys, kinds, strict=True):
            wanted = _KEY_TYPES[key.removeprefix(f"{self.key}:")]
            if kind.decode() not in ("none", wanted):
                raise WrongKeyType(f"The key {key} on {self.name} holds a {kind.decode()}, not a {wanted}")
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
                await self._writer.drain()
                waits = self._appends.futures()
                if waits:
                    await asyncio.wait(waits)
        await self._writer.close()
        self._appends.settle_all()
        await self._reader.stop()
        await self._link.close()

    # Appending --------------------------------------------------------------

    def append(self, drafts: Sequence[Draft], timestamp: str, claim: Claim | None = None) -> asyncio.Future[Appended]:
        return self._writer.append(drafts, timestamp, claim)

    async def producer_seq(self, producer: str) -> int:
        """The last seq stored for ``producer`` by any bus on the stream."""
        try:
            seq = await self._link.redis.hget(self._producers, producer)
        except FAILURES as exc:
            raise self._reader.failed(exc) from exc
        return int(seq or 0)

    # Cursors ------------------------------------------------------------------

    async def resolve(self, event_id: str) -> Resume:
        return await self._reads.resolve(event_id)

    async def read_after(self, after: str, *, limit: int, max_bytes: int) -> list[Record]:
        return await self._reads.read_after(after, limit=limit, max_bytes=max_bytes)

    async def read_before(self, before: str | None, *, limit: int, max_bytes: int) -> list[Record]:
        return await self._reads.read_before(before, limit=limit, max_bytes=max_bytes)
