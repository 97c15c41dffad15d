"""`--forward` on a shared Redis stream: each target fed once per cluster, not once per bus.

For each target, the cluster keeps in Redis where the target stands (a cursor:
the id of the last entry it took, ``K:forward:<name>:cursor``) and a lease (see
``lease``) so that one bus at a time sends to it. The holder reads the stream
after the cursor a page at a time, each read fenced by the lease; POSTs each
wanted event and waits for the answer before the next one, asking the lease's
local deadline before every attempt; and moves the cursor behind the answers,
fenced too. A bus that stops hands the lease over at once; one that dies or
hangs loses it after LEASE seconds, and the next holder starts at the cursor.

What a target sees follows from one rule: every holder POSTs an event only once
the event before it was taken (answered) by the target, or stands before the
cursor, which only moves past taken events. So the first arrival of each event
comes after the first arrival of the one before it, whichever bus sent either,
and a receiver that drops a repeated ``Idempotency-Key`` takes each event once,
in order. Repeats come only after the lease changes hands: the events the old
holder sent after its last cursor write (those of about the last 50 ms, at most
a page), and at most one request it had already started when it was paused.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Sequence
from typing import Any, Protocol

from aiohttp import web
from redis.asyncio import Redis
from redis.exceptions import RedisError

from devbus.bus.outputs.forward.forwarder import Forwarder
from devbus.bus.outputs.forward.lease import RENEW, Lease, LeaseLost
from devbus.bus.outputs.forward.progress import Progress
from devbus.bus.outputs.forward.target import FLUSH_TIMEOUT, Target
from devbus.bus.record import Record

__all__ = ["ClusterFeed", "SharedStream"]

log = logging.getLogger(__name__)

PAGE = 100  # entries read from the stream at a time
RETRY = 1.0  # seconds after a Redis failure

# What a Redis call may fail with when Redis is gone, restarting or refusing writes.
FAILURES = (RedisError, OSError)

# A stream entry as redis-py returns it.
Entry = tuple[bytes, dict[bytes, bytes] | None]


class SharedStream(Protocol):
    """What the feed needs of the stream: the handle the Redis store gives (``store/redis_shared.py``)."""

    @property
    def redis(self) -> Redis: ...

    @property
    def stream(self) -> str:
        """The stream's key."""

    @property
    def key(self) -> str:
        """The prefix under which the feed keeps its leases and cursors."""

    @property
    def consumer(self) -> str:
        """This bus's name among the buses of the cluster."""

    def records(self, entries: list[Entry]) -> list[Record]:
        """The records of entries as redis-py returns them."""


class ClusterFeed:
    """Feed the forwarder's targets from the shared stream under a lease each.

    An aiohttp cleanup_ctx, and a dispatcher output: a delivered batch only wakes
    the holder's read, which takes its pages from Redis.
    """

    def __init__(self, shared: SharedStream, forwarder: Forwarder) -> None:
        self._shared = shared
        self._forwarder = forwarder
        self.consumer = shared.consumer
        self._leases = {
            target: Lease(
                shared.redis,
                prefix=f"{shared.key}:forward:{target.name}",
                stream=shared.stream,
                holder=shared.consumer,
                group=f"forward:{target.name}",
            )
            for target in forwarder.targets
        }
        self._news = {target: asyncio.Event() for target in forwarder.targets}
        self._stopping = asyncio.Event()
        self._behind: set[Target] = set()

    def __call__(self, batch: Sequence[Record]) -> None:
        """New entries are in the stream: wake every holder that waits for them."""
        for news in self._news.values():
            news.set()

    async def run(self, app: web.Application) -> AsyncIterator[None]:
        """Feed every target while the app runs; on stop, finish the POST in flight and hand over."""
        for target, lease in self._leases.items():
            target.lease = "waiting"
            # Before the bus serves anyone, so that a new cursor starts before its first event.
            with contextlib.suppress(TimeoutError, *FAILURES):
                async with asyncio.timeout(RENEW):
                    await lease.start()
        tasks = [asyncio.create_task(self._feed(t), name=f"forward lease {t.label}") for t in self._leases]
        try:
            yield
        finally:
            self._stopping.set()
            if tasks:
                await asyncio.wait(tasks, timeout=FLUSH_TIMEOUT)
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    async def _feed(self, target: Target) -> None:
        lease = self._leases[target]
        while not self._stopping.is_set():
            try:
                cursor = await lease.acquire()
                if cursor is not None:
                    await self._hold(target, lease, cursor)
                    continue
            except LeaseLost:
                log.warning(
                    "this bus lost the lease on forwarding to %s and stopped sending to it; "
                    "the bus that holds it goes on from where the target stands",
                    target.label,
                )
                continue
            except FAILURES as exc:
                log.debug("forward lease for %s: %s; retrying", target.label, exc)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stopping.wait(), RETRY)
                continue
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), RENEW)

    async def _hold(self, target: Target, lease: Lease, cursor: str) -> None:
        """Send to ``target`` from ``cursor`` on while the lease holds; give it back when stopping."""
        log.info("this bus forwards to %s for the cluster (lease epoch %d)", target.label, lease.epoch)
        target.lease = "held"
        renewing = asyncio.create_task(self._renew(lease), name=f"renew {target.label}")
        sending = asyncio.create_task(self._send(target, lease, cursor), name=f"send {target.label}")
        try:
            await asyncio.wait([renewing, sending], return_when=asyncio.FIRST_COMPLETED)
            for task in (renewing, sending):
                if task.done():
                    task.result()  # raises why the hold ended
        finally:
            target.lease = "waiting"
            for task in (sending, renewing):
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, LeaseLost, *FAILURES):
                    await task
            if self._stopping.is_set():
                # Hand over at once rather than after the lease expires.
                with contextlib.suppress(TimeoutError, *FAILURES):
                    async with asyncio.timeout(FLUSH_TIMEOUT):
                        await asyncio.shield(lease.release())

    async def _renew(self, lease: Lease) -> None:
        while True:
            await asyncio.sleep(RENEW)
            await lease.renew()

    async def _send(self, target: Target, lease: Lease, after: str) -> None:
        progress = Progress(lease)
        try:
            await self._pages(target, lease, after, progress)
            await progress.flush()  # stopping: hand over with the cursor where the target stands
        finally:
            progress.cancel()

    async def _pages(self, target: Target, lease: Lease, after: str, progress: Progress) -> None:
        count = min(PAGE, target.limit)
        news = self._news[target]
        while not self._stopping.is_set():
            news.clear()
            page, oldest = await lease.read(after, count)
            if not page:
                # Woken by this bus's reader, or every RENEW in case it is cut off.
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(_either(news, self._stopping), RENEW)
                continue
            entries = [_entry(raw) for raw in page]
            self._check_behind(target, after, entries[0][0], oldest)
            records = {record.id: record for record in self._shared.records(entries)}
            for entry_id, _ in entries:
                if self._stopping.is_set():
                    return
                if progress.unwritten >= count:
                    await progress.flush()  # a new holder repeats at most a page
                record = records.get(entry_id.decode())
                if record is not None and self._forwarder.wants(target, record):
                    await _post(target, lease, record)
                after = entry_id.decode()
                progress.note(after)

    def _check_behind(self, target: Target, after: str, first: bytes, oldest: list[Any]) -> None:
        """Say so (once per episode) when the cursor was trimmed away: what lay after it is gone."""
        # The page starts at the oldest entry left, so every entry up to the cursor is gone: the
        # cursor is at least --history entries behind (or exactly at the edge, which is as close).
        behind = after != "0-0" and bool(oldest) and oldest[0][0] == first
        if behind and target not in self._behind:
            log.warning(
                "forwarding to %s fell behind the stream's history: events trimmed before they were sent "
                "are not forwarded (raise --history, or bring the target back sooner)",
                target.label,
            )
        (self._behind.add if behind else self._behind.discard)(target)


async def _post(target: Target, lease: Lease, record: Record) -> None:
    """POST one event under the lease; LeaseLost, unsent, once this bus cannot prove it holds it."""
    if not await target.send(record.event, record.json, allowed=lease.valid, epoch=lease.epoch):
        raise LeaseLost


def _entry(raw: list[Any]) -> Entry:
    """A stream entry as a Lua call returns it ([id, [field, value, …]]), as redis-py's XRANGE would."""
    entry_id, fields = raw
    return entry_id, dict(zip(fields[::2], fields[1::2], strict=True)) if fields else None


async def _either(*events: asyncio.Event) -> None:
    waits = [asyncio.create_task(event.wait()) for event in events]
    try:
        await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for wait in waits:
            wait.cancel()
