"""Resuming streams read the store page by page, then go live: no duplicate, no gap; evicted streams are closed."""

from __future__ import annotations

import asyncio
import json
import socket
from pathlib import Path

import pytest
from support import WAIT, BusFactory, open_stream

from devbus.bus import pages
from devbus.bus.keys import DISPATCHER, FANOUT
from devbus.bus.outputs.sse.outlet import Outlet
from devbus.bus.pages import PAGE_EVENTS
from devbus.envelope import Draft

EVENTS = PAGE_EVENTS * 3 + 17  # several pages, the last one partial


@pytest.fixture(params=["memory", "sqlite"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """Each store the bus can run on."""
    return f"sqlite:{tmp_path / 'events.db'}" if request.param == "sqlite" else "memory"


async def test_a_resume_over_many_pages_with_live_events_meanwhile_misses_nothing(
    make_bus: BusFactory, store: str
) -> None:
    """Events published while the replay reads pages arrive once each, in order, after the replayed ones."""
    client = await make_bus(store=store, history=EVENTS * 100)
    dispatcher = client.app[DISPATCHER]
    [first] = await dispatcher.publish([Draft("n", {"n": 0}, "test")])
    await dispatcher.publish([Draft("n", {"n": n}, "test") for n in range(1, EVENTS)])
    caught_up = asyncio.Event()

    async def publish_meanwhile() -> int:
        # Keep publishing while the stream replays and joins the live fan-out, then a last one.
        n = EVENTS
        while not caught_up.is_set():
            await dispatcher.publish([Draft("n", {"n": m}, "test") for m in range(n, n + 7)])
            n += 7
            await asyncio.sleep(0.001)  # a steady trickle of live events, not a synchronisation
        await dispatcher.publish([Draft("n", {"n": n}, "test")])
        return n + 1

    resumed = await open_stream(client, headers={"Last-Event-ID": first.id})
    publisher = asyncio.create_task(publish_meanwhile())
    seen: list[int] = []
    async with asyncio.timeout(WAIT * 3):
        while not publisher.done() or len(seen) < publisher.result() - 1:
            seen.append(json.loads((await resumed.event())["data"])["data"]["n"])
            if len(seen) >= EVENTS + 200:
                caught_up.set()
    assert seen == list(range(1, await publisher))


async def test_a_resume_with_a_filter_gets_only_matching_events_across_pages(make_bus: BusFactory, store: str) -> None:
    client = await make_bus(store=store, history=EVENTS)
    dispatcher = client.app[DISPATCHER]
    records = await dispatcher.publish([Draft("odd" if n % 2 else "even", {"n": n}, "test") for n in range(EVENTS)])
    resumed = await open_stream(client, "/api/dev/events?types=odd", headers={"Last-Event-ID": records[0].id})
    replayed = [json.loads((await resumed.event())["data"])["data"]["n"] for _ in range(EVENTS // 2)]
    assert replayed == list(range(1, EVENTS, 2))
    [live] = await dispatcher.publish([Draft("odd", {"n": -1}, "test")])
    assert (await resumed.event())["id"] == live.id


def read_until_closed(sock: socket.socket) -> None:
    """Read and discard until the peer closes (EOF or reset)."""
    while True:
        try:
            if not sock.recv(1 << 16):
                return
        except ConnectionResetError:
            return


async def test_an_evicted_subscriber_is_disconnected_at_once(make_bus: BusFactory) -> None:
    """Regression: an evicted stream was forgotten but its connection stayed open, waiting to drain."""
    client = await make_bus(subscriber_buffer=64 * 1024, max_subscribers=1)
    stalled = socket.socket()
    stalled.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    stalled.connect(("127.0.0.1", client.port))
    stalled.sendall(b"GET /api/dev/events HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
    fanout = client.app[FANOUT]
    dispatcher = client.app[DISPATCHER]
    try:
        loop = asyncio.get_running_loop()
        stalled.settimeout(WAIT)
        # Its headers are out, so it is subscribed; from here on it reads nothing.
        assert b"200 OK" in await loop.run_in_executor(None, stalled.recv, 256)
        async with asyncio.timeout(WAIT):
            blob = "x" * 4096
            while fanout.subscribers:
                await dispatcher.publish([Draft("fill", {"blob": blob}, "test")] * 20)
                await asyncio.sleep(0.01)
        # Its slot is free only because its connection is gone: a new stream is accepted.
        fresh = await open_stream(client)
        fresh.response.close()
        async with asyncio.timeout(WAIT):
            await loop.run_in_executor(None, read_until_closed, stalled)
    finally:
        stalled.close()


async def test_a_resume_that_reads_nothing_is_closed_after_the_stall_bound(
    make_bus: BusFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A stale resume that never reads holds one page, then is evicted, with no live traffic to push it out."""
    monkeypatch.setattr(pages, "PAGE_STALL", 0.2)
    client = await make_bus(history=1000)
    records = await client.app[DISPATCHER].publish([Draft("big", {"blob": "x" * 8192}, "test")] * 500)
    fanout = client.app[FANOUT]
    evicted = asyncio.Event()
    evict = fanout.evict

    def evict_and_tell(outlet: Outlet, *, why: str = "") -> None:
        evict(outlet, why=why)
        evicted.set()

    monkeypatch.setattr(fanout, "evict", evict_and_tell)
    stalled = socket.socket()
    stalled.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    stalled.connect(("127.0.0.1", client.port))
    stalled.sendall(
        f"GET /api/dev/events HTTP/1.1\r\nHost: 127.0.0.1\r\nLast-Event-ID: {records[0].id}\r\n\r\n".encode()
    )
    try:
        loop = asyncio.get_running_loop()
        stalled.settimeout(WAIT)
        assert b"200 OK" in await loop.run_in_executor(None, stalled.recv, 256)
        async with asyncio.timeout(WAIT):
            await evicted.wait()  # reading nothing meanwhile
            await loop.run_in_executor(None, read_until_closed, stalled)
        metrics = await (await client.get("/metrics")).text()
        assert "devbus_evictions_total 1.0" in metrics
    finally:
        stalled.close()
