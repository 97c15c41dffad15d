"""`--forward` on a shared Redis stream: each target fed once per cluster, not once per bus.

Every target has a consumer group on the stream (``forward:<name>``), so where
the cluster stands with it lives in Redis, and a lease (``K:forward:<name>``, a
key that expires unless renewed) so that one bus at a time sends to it: order
holds, and each event is sent once however many buses run. The holder reads
the group a page at a time, sends what the target wants (the forwarder's type
filter and loop safety), and acknowledges the page once the target took it.

A bus that stops hands the lease over at once; one that dies loses it after
LEASE seconds. The next holder first claims what is pending in the group (read
but not acknowledged: at most a page of a bus that died mid-send, which the
target may get twice), then goes on with new events: at least once across a
crash, exactly once otherwise.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from typing import Any, Protocol, cast

from aiohttp import web
from redis.asyncio import Redis
from redis.exceptions import RedisError, ResponseError

from devbus.bus.outputs.forward.forwarder import Forwarder
from devbus.bus.outputs.forward.target import FLUSH_TIMEOUT, Target
from devbus.bus.record import Record

__all__ = ["ClusterFeed", "SharedStream"]

log = logging.getLogger(__name__)

LEASE = 3.0  # seconds a lease lasts unless renewed
RENEW = 1.0  # seconds between renewals, and between tries of a bus waiting for the lease
PAGE = 100  # entries read from the group at a time
BLOCK_MS = 1000
RETRY = 1.0  # seconds after a Redis failure

# What a Redis call may fail with when Redis is gone, restarting or refusing writes.
FAILURES = (RedisError, OSError)

# A stream entry as redis-py returns it.
Entry = tuple[bytes, dict[bytes, bytes] | None]

# Renew or give up the lease only if this bus still holds it.
_RENEW = "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end return 0"
_RELEASE = "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end return 0"


class _LeaseLost(Exception):
    """Another bus holds the target's lease now."""


class SharedStream(Protocol):
    """What the feed needs of the stream: the handle the Redis store gives (``store/redis_shared.py``)."""

    @property
    def redis(self) -> Redis: ...

    @property
    def stream(self) -> str:
        """The stream's key."""

    @property
    def key(self) -> str:
        """The prefix under which the feed keeps its leases."""

    @property
    def consumer(self) -> str:
        """This bus's name in the consumer groups."""

    def records(self, entries: list[Entry]) -> list[Record]:
        """The records of entries as redis-py returns them."""


class ClusterFeed:
    """Feed the forwarder's targets from consumer groups; an aiohttp cleanup_ctx."""

    def __init__(self, shared: SharedStream, forwarder: Forwarder) -> None:
        self._shared = shared
        self._forwarder = forwarder
        self._redis = shared.redis
        self.consumer = shared.consumer
        self._renew = self._redis.register_script(_RENEW)
        self._release = self._redis.register_script(_RELEASE)

    async def run(self, app: web.Application) -> AsyncIterator[None]:
        """Feed every target while the app runs."""
        tasks = [asyncio.create_task(self._feed(t), name=f"forward group {t.label}") for t in self._forwarder.targets]
        try:
            yield
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    async def _feed(self, target: Target) -> None:
        group = f"forward:{target.name}"
        lease = f"{self._shared.key}:forward:{target.name}"
        while True:
            try:
                await self._create_group(group)
                if await self._redis.set(lease, self.consumer, nx=True, px=int(LEASE * 1000)):
                    await self._hold(target, group, lease)
                else:
                    await asyncio.sleep(RENEW)
            except _LeaseLost:
                log.warning("another bus took over forwarding to %s", target.label)
            except FAILURES as exc:
                log.debug("forward group for %s: %s; retrying", target.label, exc)
                await asyncio.sleep(RETRY)

    async def _create_group(self, group: str) -> None:
        try:
            # From the stream's end: a cluster forwards what arrives after its first bus started.
            await self._redis.xgroup_create(self._shared.stream, group, id="$", mkstream=True)
        except ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    async def _hold(self, target: Target, group: str, lease: str) -> None:
        log.info("this bus forwards to %s for the cluster", target.label)
        renewing = asyncio.create_task(self._keep(lease), name=f"lease {target.label}")
        work = asyncio.create_task(self._send(target, group), name=f"send {target.label}")
        try:
            await asyncio.wait([renewing, work], return_when=asyncio.FIRST_COMPLETED)
            if renewing.done():
                renewing.result()  # raises why the lease ended
        finally:
            work.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await work
            renewing.cancel()
            with contextlib.suppress(asyncio.CancelledError, *FAILURES):
                await renewing
            # Hand over at once when this bus stops, rather than after LEASE.
            with contextlib.suppress(*FAILURES):
                await asyncio.shield(self._release(keys=[lease], args=[self.consumer]))

    async def _keep(self, lease: str) -> None:
        while True:
            await asyncio.sleep(RENEW)
            if not await self._renew(keys=[lease], args=[self.consumer, int(LEASE * 1000)]):
                raise _LeaseLost

    async def _send(self, target: Target, group: str) -> None:
        redis, stream = self._redis, self._shared.stream
        count = min(PAGE, target.limit)
        # First what the group has pending: read by a bus that stopped before acknowledging it.
        start: bytes = b"0-0"
        while True:
            claimed: list[Any] = await redis.xautoclaim(
                stream, group, self.consumer, min_idle_time=0, start_id=start, count=count
            )
            # Redis 7 adds the ids of entries trimmed while pending: acknowledged, with nothing to send.
            start, entries, trimmed = claimed[0], claimed[1], claimed[2] if len(claimed) > 2 else []
            await self._deliver(target, group, entries, trimmed)
            if start == b"0-0":
                break
        while True:
            reply = await redis.xreadgroup(group, self.consumer, {stream: ">"}, count=count, block=BLOCK_MS)
            if reply:
                [(_, entries)] = cast(list[tuple[bytes, list[Entry]]], reply)
                await self._deliver(target, group, entries, [])

    async def _deliver(self, target: Target, group: str, entries: list[Entry], deleted: list[bytes]) -> None:
        """Send a page's wanted events, wait until the target took them, then acknowledge the page."""
        for record in self._shared.records(entries):
            if self._forwarder.wants(target, record):
                target.offer(record.event, record.json)
        ids = [entry_id for entry_id, _ in entries] + deleted
        try:
            await target.drained()
        except asyncio.CancelledError:
            # Stopping: let what is queued go out for a moment. What is not sent by
            # then stays pending, for the next holder to send.
            with contextlib.suppress(TimeoutError, *FAILURES):
                async with asyncio.timeout(FLUSH_TIMEOUT):
                    await asyncio.shield(target.drained())
                    await self._acknowledge(group, ids)
            raise
        await self._acknowledge(group, ids)

    async def _acknowledge(self, group: str, ids: list[bytes]) -> None:
        if ids:
            await self._redis.xack(self._shared.stream, group, *ids)
