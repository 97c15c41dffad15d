"""`--forward` on a Redis cluster: one fenced lease holder at a time, every POST keyed by the event's id.

Real processes: a redis-server with an fsynced AOF, two `devbus run --store redis://… --forward …`
buses, and a receiver that records every POST. What a receiver that drops repeated
``Idempotency-Key``s takes must be every event once, in the stream's order, whatever
happens to the lease holder; what one that does not drop them gets is bounded.
"""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestClient
from redis.asyncio import Redis
from support import WAIT, BusFactory, BusProcess, Receiver, RedisServer, eventually, fetch_history
from test_forward import Reserved

pytestmark = pytest.mark.slow

Receivers = Callable[..., Awaitable[Receiver]]

PAUSE = 5.0  # seconds the lease holder is stopped: longer than its lease (3 s)
PAGE = 100  # entries a holder reads at a time (outputs/forward/cluster.py)
HISTORY = 20_000  # more than the tests send: the stream keeps every event to compare with


def first_arrivals(receiver: Receiver) -> list[str]:
    """What a receiver that drops repeated Idempotency-Keys takes: the ids, in arrival order."""
    seen: set[str] = set()
    taken = []
    for headers in receiver.headers:
        key = headers["Idempotency-Key"]
        if key not in seen:
            seen.add(key)
            taken.append(key)
    return taken


def late_requests(receiver: Receiver) -> int:
    """POSTs that arrived after a POST of a later lease holder (a higher X-Devbus-Epoch)."""
    highest = 0
    late = 0
    for headers in receiver.headers:
        epoch = int(headers["X-Devbus-Epoch"])
        late += epoch < highest
        highest = max(highest, epoch)
    return late


async def lease_of(session: aiohttp.ClientSession, bus: BusProcess) -> str:
    async with session.get(f"{bus.url}/api/dev/health") as response:
        [target] = (await response.json())["forward"]
        return str(target["lease"])


async def until(check: Callable[[], Awaitable[bool]], *, within: float = WAIT) -> None:
    async with asyncio.timeout(within):
        while not await check():  # noqa: ASYNC110 - health is polled over HTTP
            await asyncio.sleep(0.05)


@asynccontextmanager
async def publishing(session: aiohttp.ClientSession, buses: list[BusProcess]) -> AsyncIterator[list[int]]:
    """POST small batches to ``buses`` in turn, about 300 events a second, until the block ends.

    Yields a one-item list counting the 503s (Redis away: the batch is sent again).
    """
    refused = [0]
    stop = asyncio.Event()

    async def publish() -> None:
        n = 0
        while not stop.is_set():
            bus = buses[n % len(buses)]
            events = [{"event_type": "fw.tick", "data": {"n": n + i}} for i in range(3)]
            try:
                async with session.post(f"{bus.url}/api/dev/batch", json={"events": events}) as response:
                    if response.status == 503:
                        refused[0] += 1
                    else:
                        assert response.status == 200, await response.text()
                        n += 3
            except aiohttp.ClientError:
                refused[0] += 1
            await asyncio.sleep(0.01)  # the publisher's pace, not a synchronisation

    task = asyncio.create_task(publish())
    try:
        yield refused
    finally:
        stop.set()
        await task


async def everything_forwarded(receiver: Receiver, bus: BusProcess) -> list[str]:
    """Wait until the receiver took every event the stream holds; return the stream's ids."""
    ids: list[str] = []

    async def done() -> bool:
        nonlocal ids
        ids = [event["id"] for event in await asyncio.to_thread(fetch_history, bus, limit=HISTORY)]
        return set(ids) <= set(first_arrivals(receiver))

    await until(done, within=WAIT * 3)
    return ids


async def test_a_paused_lease_holder_sends_nothing_beside_the_bus_that_took_over(
    bus_process: Callable[..., BusProcess], redis_server: RedisServer, receivers: Receivers
) -> None:
    """SIGSTOP of the holder for 5 s, then SIGCONT: before fencing, 20 repeats and 16-52 reversals."""
    receiver = await receivers()
    args = ("--store", redis_server.url, "--history", str(HISTORY), "--quiet", "--forward", receiver.url)
    a = await asyncio.to_thread(bus_process, *args)
    async with aiohttp.ClientSession() as session:
        await until(lambda: _is(lease_of(session, a), "held"))
        b = await asyncio.to_thread(bus_process, *args)
        assert await lease_of(session, b) == "waiting"
        async with publishing(session, [b]):
            await receiver.wait_accepted(150)
            os.kill(a.proc.pid, signal.SIGSTOP)
            try:
                await asyncio.sleep(PAUSE)  # the pause under test
                await until(lambda: _is(lease_of(session, b), "held"))
                taken_over_at = len(receiver.accepted)
            finally:
                os.kill(a.proc.pid, signal.SIGCONT)
            # The old holder wakes in the middle of the traffic: it must step down, not send on.
            await receiver.wait_accepted(taken_over_at + 150)
        ids = await everything_forwarded(receiver, b)
        assert await lease_of(session, a) == "waiting"

    # Dropping repeated keys, the receiver took every event once, in the stream's order.
    assert first_arrivals(receiver) == ids
    assert len({headers["X-Devbus-Epoch"] for headers in receiver.headers}) == 2, "one change of holder"
    # Without dropping them: after the one change of holder, a bounded run of repeats.
    repeats = len(receiver.headers) - len(ids)
    assert 0 <= repeats <= PAGE + 1
    assert late_requests(receiver) <= 1, "the old holder sent at most the one request it had begun"


async def test_a_redis_restart_under_forwarding_repeats_nothing_a_receiver_keeps(
    bus_process: Callable[..., BusProcess], redis_server: RedisServer, receivers: Receivers
) -> None:
    """Redis killed and restarted on its AOF mid-stream: before, 20 repeats reached the receiver."""
    receiver = await receivers()
    args = ("--store", redis_server.url, "--history", str(HISTORY), "--quiet", "--forward", receiver.url)
    a = await asyncio.to_thread(bus_process, *args)
    b = await asyncio.to_thread(bus_process, *args)
    async with aiohttp.ClientSession() as session, publishing(session, [a, b]) as refused:
        await receiver.wait_accepted(150)
        await asyncio.to_thread(redis_server.restart)
        before = len(receiver.accepted)
        await receiver.wait_accepted(before + 150, within=WAIT * 2)
    assert refused[0] > 0, "the restart went unnoticed: the test did not test it"
    ids = await everything_forwarded(receiver, a)

    assert first_arrivals(receiver) == ids
    assert len(receiver.headers) - len(ids) <= PAGE + 1
    assert late_requests(receiver) <= 1


async def post(client: TestClient[Any, Any], event_type: str) -> dict[str, Any]:
    response = await client.post("/api/dev/webhook", json={"event_type": event_type})
    assert response.status == 200, await response.text()
    body: dict[str, Any] = await response.json()
    return body


async def _is(value: Awaitable[str], expected: str) -> bool:
    return await value == expected


@pytest.mark.parametrize("pending", [True, False], ids=["one-pending", "all-acknowledged"])
async def test_a_target_fed_by_a_consumer_group_goes_on_where_the_group_stood(
    make_bus: BusFactory, redis_server: RedisServer, receivers: Receivers, pending: bool
) -> None:
    """devbus 0.2 fed a target from a consumer group: an upgraded cluster must not skip or repeat what it held."""
    receiver = await receivers()
    first = await make_bus(store=redis_server.url)
    ids = [(await post(first, f"old.{n}"))["id"] for n in range(5)]
    stream, group = "devbus:events", f"forward:127.0.0.1:{receiver.port}"
    redis = Redis.from_url(redis_server.url)
    try:
        # The old bus had read three events and the target had taken two (or all three).
        await redis.xgroup_create(stream, group, id="0")
        await redis.xreadgroup(group, "old-bus", {stream: ">"}, count=3)
        await redis.xack(stream, group, *ids[: 2 if pending else 3])
        await make_bus(store=redis_server.url, forward=(receiver.url,))
        await post(first, "new")
        expected = ["old.2", "old.3", "old.4", "new"] if pending else ["old.3", "old.4", "new"]
        assert await receiver.wait_accepted(len(expected)) == expected
        assert await redis.xinfo_groups(stream) == [], "the group is gone"
    finally:
        await redis.aclose()


async def test_a_target_down_longer_than_the_history_gets_what_is_left_and_the_bus_says_so(
    make_bus: BusFactory,
    redis_server: RedisServer,
    receivers: Receivers,
    caplog: pytest.LogCaptureFixture,
) -> None:
    target = Reserved()  # a port that refuses connections until a receiver takes it
    try:
        bus = await make_bus(store=redis_server.url, history=10, forward=(target.url,))
        first = (await post(bus, "first"))["id"]

        async def down() -> bool:
            [state] = (await (await bus.get("/api/dev/health")).json())["forward"]
            return bool(state["state"] == "down")

        await eventually(down)
        for n in range(30):
            await post(bus, f"later.{n}")
        receiver = await receivers(target.release())
        assert await receiver.wait_accepted(11) == ["first"] + [f"later.{n}" for n in range(20, 30)]
        assert receiver.accepted[0]["id"] == first
        assert sum("fell behind the stream's history" in r.getMessage() for r in caplog.records) == 1
    finally:
        target.release()
