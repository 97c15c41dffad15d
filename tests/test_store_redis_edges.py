"""The Redis store at its edges, against a real redis-server: away, hanging, foreign ids, trimmed past.

A resume or /history while Redis is away answers a plain 503 before any byte of a 200; a
stream open through an outage, replaying or live, goes on where it stopped; an id of another
--store-key gets devbus.gap; a bus that falls behind the trim says so, whatever --history is.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestClient
from support import WAIT, BusFactory, BusProcess, RedisServer, SSEReader, eventually, open_stream

from devbus.bus.store.redis_reads import READ_TIMEOUT

Client = TestClient[Any, Any]


async def post_batch(client: Client, count: int, *, start: int = 0, pad: int = 0) -> list[str]:
    events = [{"event_type": "e", "data": {"n": n, "pad": "x" * pad}} for n in range(start, start + count)]
    response = await client.post("/api/dev/batch", json={"events": events})
    assert response.status == 200, await response.text()
    ids: list[str] = (await response.json())["ids"]
    return ids


async def store_state(client: Client) -> str:
    health = await (await client.get("/api/dev/health")).json()
    return str(health["store"]["state"])


@contextmanager
def stopped(server: RedisServer) -> Iterator[None]:
    """Redis hangs: the process is stopped (SIGSTOP), its socket open, nothing answered."""
    assert server.proc is not None
    os.kill(server.proc.pid, signal.SIGSTOP)
    try:
        yield
    finally:
        os.kill(server.proc.pid, signal.SIGCONT)


REQUESTS: dict[str, Callable[[Client, str], Awaitable[aiohttp.ClientResponse]]] = {
    "last-event-id": lambda bus, since: bus.get("/api/dev/events", headers={"Last-Event-ID": since}),
    "since": lambda bus, since: bus.get("/api/dev/events", params={"since": since}),
    "history-since": lambda bus, since: bus.get("/api/dev/history", params={"since": since}),
    "history": lambda bus, since: bus.get("/api/dev/history"),
}


async def assert_plain_503(response: aiohttp.ClientResponse, store: str) -> None:
    # The status line is the response's first bytes: no 200 went out before it.
    assert response.status == 503
    assert response.headers["Content-Type"].startswith("application/json")
    assert response.headers["Retry-After"] == "2"
    body = await response.json()
    assert body["success"] is False
    assert store in body["error"]


@pytest.mark.parametrize("request_name", list(REQUESTS))
async def test_a_resume_while_redis_is_gone_is_a_plain_503_then_works_once_it_is_back(
    make_bus: BusFactory, redis_server: RedisServer, request_name: str
) -> None:
    """Before: 200 OK, then a whole `HTTP/1.1 503` response inside the chunked body (curl exit 56)."""
    send = REQUESTS[request_name]
    bus = await make_bus(store=redis_server.url)
    [since, *_] = await post_batch(bus, 5)
    redis_server.kill()
    await assert_plain_503(await send(bus, since), redis_server.url)
    redis_server.start()

    async def answered() -> bool:
        response = await send(bus, since)
        if response.status == 503:
            return False
        assert response.status == 200
        response.close()
        return True

    await eventually(answered, within=WAIT * 2)


@pytest.mark.parametrize("request_name", ["last-event-id", "history"])
async def test_a_resume_while_redis_hangs_is_a_503_within_the_read_timeout(
    make_bus: BusFactory, redis_server: RedisServer, request_name: str
) -> None:
    """Before: no byte for 10 s per Redis call, then the same broken body."""
    send = REQUESTS[request_name]
    bus = await make_bus(store=redis_server.url)
    [since, *_] = await post_batch(bus, 5)
    with stopped(redis_server):
        started = time.monotonic()
        await assert_plain_503(await send(bus, since), redis_server.url)
        assert time.monotonic() - started < READ_TIMEOUT + 3
        # The store now counts as away: the next one is refused at once.
        started = time.monotonic()
        await assert_plain_503(await send(bus, since), redis_server.url)
        assert time.monotonic() - started < 1


async def test_a_stream_opened_while_redis_is_gone_gets_what_follows_once_it_is_back(
    make_bus: BusFactory, redis_server: RedisServer
) -> None:
    """A live stream needs nothing from the store to start: it opens, and delivery resumes with Redis."""
    bus = await make_bus(store=redis_server.url)
    await post_batch(bus, 3)
    redis_server.kill()
    response = await bus.get("/api/dev/events")
    assert response.status == 200
    stream = SSEReader(response)
    connected = json.loads((await stream.event())["data"])
    redis_server.start()

    async def accepted() -> bool:
        response = await bus.post("/api/dev/webhook", json={"event_type": "after.outage"})
        return response.status == 200

    await eventually(accepted, within=WAIT * 2)
    event = await stream.event()
    assert json.loads(event["data"])["type"] == "after.outage"
    # Nothing was between the last id the connected frame gave and this event.
    history = await (await bus.get("/api/dev/history", params={"since": connected["last_id"]})).json()
    assert [e["id"] for e in history["events"]] == [event["id"]]


async def test_a_replay_cut_by_redis_goes_on_where_it_stopped_once_it_is_back(
    make_bus: BusFactory, redis_server: RedisServer
) -> None:
    """The replay waits with the stream open, as a live stream does, and misses nothing."""
    bus = await make_bus(store=redis_server.url)
    ids = []
    for start in range(0, 4000, 500):
        ids += await post_batch(bus, 500, start=start, pad=1000)  # 4 MB: far more than a socket buffers
    stream = await open_stream(bus, headers={"Last-Event-ID": ids[0]})
    seen = [(await stream.event())["id"]]
    redis_server.kill()
    await eventually(lambda: _is(store_state(bus), "down"))
    redis_server.start()
    async with asyncio.timeout(WAIT * 3):
        while len(seen) < len(ids) - 1:
            seen.append((await stream.event())["id"])
    assert seen == ids[1:]
    # Still the same stream, live now.
    [live] = await post_batch(bus, 1, start=4000)
    assert (await stream.event())["id"] == live


async def test_an_id_of_another_store_key_resumes_with_a_gap(make_bus: BusFactory, redis_server: RedisServer) -> None:
    """Before: stream ids are times, so the other key's id looked like one of ours and skipped half."""
    ours = await make_bus(store=redis_server.url, store_key="ours")
    theirs = await make_bus(store=redis_server.url, store_key="theirs")
    kept: list[str] = []
    foreign: list[str] = []
    for n in range(10):
        kept += await post_batch(ours, 1, start=n)
        foreign += await post_batch(theirs, 1, start=n)
    since = foreign[5]  # between our ids in time
    stream = await open_stream(ours, headers={"Last-Event-ID": since})
    gap = json.loads((await stream.event())["data"])
    assert (gap["type"], gap["data"]["last_event_id"]) == ("devbus.gap", since)
    assert [(await stream.event())["id"] for _ in kept] == kept
    history = await (await ours.get("/api/dev/history", params={"since": since})).json()
    assert [e["id"] for e in history["events"]] == kept
    # The id the gap gave resumes with no second gap.
    again = await open_stream(ours, headers={"Last-Event-ID": gap["id"]})
    assert [(await again.event())["id"] for _ in kept] == kept


@pytest.mark.parametrize("history", [100, 1000, 5000])
async def test_a_bus_that_falls_behind_the_trim_says_so_at_any_history(
    make_bus: BusFactory, bus_process: Callable[..., BusProcess], redis_server: RedisServer, history: int
) -> None:
    """Before: logged at --history 5000 but not 1000, checked only on pages of 2000 entries."""
    args = ("--store", redis_server.url, "--history", str(history), "--log-level", "warning")
    behind = await asyncio.to_thread(bus_process, *args)
    writer = await make_bus(store=redis_server.url, history=history)
    warning = "fell --history"

    async def caught_up(last: str) -> bool:
        async with aiohttp.ClientSession() as session, session.get(f"{behind.url}/api/dev/health") as response:
            return bool((await response.json())["last_id"] == last)

    async def fall_behind(count: int) -> None:
        assert behind.proc.pid is not None
        os.kill(behind.proc.pid, signal.SIGSTOP)
        try:
            ids = [i for start in range(0, count, 2000) for i in await post_batch(writer, min(2000, count - start))]
        finally:
            os.kill(behind.proc.pid, signal.SIGCONT)
        await eventually(lambda: caught_up(ids[-1]), within=WAIT * 2)

    await fall_behind(history // 2)  # within the history: nothing is lost, nothing said
    assert not any(warning in line for line in behind.lines)
    await fall_behind(history * 3 // 2)
    await asyncio.to_thread(behind.wait_for_line, warning)
    assert sum(warning in line for line in behind.lines) == 1


async def _is(value: Awaitable[str], expected: str) -> bool:
    return await value == expected
