"""ZeroMQ burst flow control: paced to the subscribers that keep up, never to the slowest."""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time

from support import WAIT, BusFactory, open_stream

from devbus import AsyncPublisher
from devbus.bus.keys import ENDPOINTS

EVENTS = 3000
BLOB = "x" * 2048


def read_slowly(sock: socket.socket, stop: threading.Event) -> None:
    """A tab that keeps reading, but a small piece every few milliseconds."""
    sock.settimeout(WAIT)
    while not stop.is_set():
        try:
            if not sock.recv(512):
                return
        except OSError:
            return
        time.sleep(0.005)  # the pace of a slow reader, not a synchronisation


async def test_a_slow_reader_does_not_hold_a_burst_back_from_the_others(make_bus: BusFactory) -> None:
    """The fast subscriber gets the whole burst in order; the slow one is evicted, not waited for."""
    client = await make_bus(ingest="tcp://127.0.0.1:*", subscriber_buffer=256 * 1024, history=EVENTS)
    slow = socket.socket()
    slow.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    slow.connect(("127.0.0.1", client.port))
    slow.sendall(b"GET /api/dev/events HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
    stop = threading.Event()
    reader = threading.Thread(target=read_slowly, args=(slow, stop), daemon=True)
    reader.start()
    fast = await open_stream(client)

    async def read_fast() -> list[int]:
        return [json.loads((await fast.event())["data"])["data"]["n"] for _ in range(EVENTS)]

    try:
        # The fast subscriber reads while the burst is sent: the publisher's close waits for the
        # bus's acks, by when a reader that had not started would be far behind too.
        reading = asyncio.create_task(read_fast())
        async with AsyncPublisher(ingest=client.app[ENDPOINTS]["ingest"]) as publisher:
            for n in range(EVENTS):
                await publisher.emit("burst", {"n": n, "blob": BLOB})
        assert await reading == list(range(EVENTS))
        metrics = await (await client.get("/metrics")).text()
        assert "devbus_evictions_total 1.0" in metrics
    finally:
        stop.set()
        slow.close()
        reader.join(timeout=WAIT)
