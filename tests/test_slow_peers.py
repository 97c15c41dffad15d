"""Slow and piled-up HTTP peers against a real `devbus run`: each costs bounded time and memory."""

from __future__ import annotations

import asyncio
import contextlib
import os
import select
import signal
import socket
import time
from collections.abc import Callable

import pytest
from support import WAIT, BusProcess, address, rss

MIB = 1024 * 1024
Start = Callable[..., BusProcess]


async def closed_by_server(reader: asyncio.StreamReader, *, within: float) -> bytes:
    """Read until the bus closes the connection; return what it sent."""
    async with asyncio.timeout(within):
        received = b""
        while chunk := await reader.read(65536):
            received += chunk
        return received


async def health(url: str, *, within: float) -> int:
    """GET /health over a fresh connection; return the status code."""
    reader, writer = await asyncio.open_connection(*address(url))
    try:
        writer.write(b"GET /api/dev/health HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        response = await closed_by_server(reader, within=within)
        return int(response.split(b" ", 2)[1])
    finally:
        writer.close()


async def test_connections_that_trickle_headers_are_closed_after_the_header_timeout(bus_process: Start) -> None:
    """Regression: headers sent a byte at a time held a connection (and a descriptor) for ever."""
    bus = bus_process("--header-timeout", "1")
    connections = [await asyncio.open_connection(*address(bus.url)) for _ in range(50)]
    started = time.monotonic()

    async def trickle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bytes:
        async def drip() -> None:
            for byte in b"GET /api/dev/history HTTP/1.1\r\nHost: localhost\r\n":
                writer.write(bytes([byte]))
                await asyncio.sleep(0.1)  # the slow peer's pace, not a synchronisation

        dripping = asyncio.create_task(drip())
        try:
            return await closed_by_server(reader, within=WAIT * 3)
        finally:
            dripping.cancel()
            writer.close()

    answers = await asyncio.gather(*(trickle(r, w) for r, w in connections))
    # Closed without an answer, long before the headers could have finished (5 s).
    assert answers == [b""] * len(connections)
    assert time.monotonic() - started < 4.9


@pytest.mark.slow
async def test_a_stalled_upload_is_answered_408_and_its_memory_released(bus_process: Start) -> None:
    """Regression: 300 uploads stalled just under 1 MiB held 304 MB for as long as they liked."""
    bus = bus_process("--body-timeout", "2", "--max-body", "1MiB")
    before = rss(bus.proc.pid)
    uploads = 40
    head = (
        b"POST /api/dev/webhook HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n"
        b"Content-Length: %d\r\n\r\n" % MIB
    )
    body = b'{"event_type":"t.slow","data":{"x":"' + b"x" * (MIB - 100)
    connections = []
    for _ in range(uploads):
        reader, writer = await asyncio.open_connection(*address(bus.url))
        writer.write(head + body)
        await writer.drain()
        connections.append((reader, writer))
    started = time.monotonic()
    answers = await asyncio.gather(*(closed_by_server(r, within=WAIT * 3) for r, _ in connections))
    for _, writer in connections:
        writer.close()
    assert all(answer.startswith(b"HTTP/1.1 408") and b"--body-timeout" in answer for answer in answers)
    assert time.monotonic() - started < WAIT * 2
    # The bus held at most the uploads themselves while they lasted, and nothing was published.
    assert rss(bus.proc.pid) - before < uploads * MIB * 2
    assert await health(bus.url, within=WAIT) == 200


async def test_connection_pile_up_leaves_health_reachable(bus_process: Start) -> None:
    """Regression: connections past the open-file limit made /health unreachable for 40 s."""
    bus = bus_process("--header-timeout", "60", open_files=256)
    piled = []
    for _ in range(400):
        reader, writer = await asyncio.open_connection(*address(bus.url))
        writer.write(b"GET /api/dev/history HTTP/1.1\r\nHost: local")  # and never more
        piled.append((reader, writer))
    try:
        started = time.monotonic()
        assert await health(bus.url, within=WAIT) == 200
        assert time.monotonic() - started < WAIT
        # The bus displaced idle connections instead of running out of descriptors.
        metrics = await metrics_text(bus.url)
        assert 'devbus_rejected_total{reason="connection_displaced"}' in metrics
    finally:
        for _, writer in piled:
            writer.close()


async def metrics_text(url: str) -> str:
    reader, writer = await asyncio.open_connection(*address(url))
    try:
        writer.write(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        return (await closed_by_server(reader, within=WAIT)).decode()
    finally:
        writer.close()


def _somaxconn() -> int:
    with open("/proc/sys/net/core/somaxconn") as file:
        return int(file.read())


@pytest.mark.skipif(_somaxconn() < 600, reason="the kernel caps every listen backlog below 600")
def test_the_listen_backlog_holds_a_storm_of_reconnecting_pages(bus_process: Start) -> None:
    """Regression: a backlog of 128 overflowed 7,150 times when 3,000 tabs reconnected at once."""
    bus = bus_process("--max-subscribers", "1000")
    storm = 500
    os.kill(bus.proc.pid, signal.SIGSTOP)  # a bus busy for a moment: only the kernel queue takes connections
    sockets = []
    try:
        for _ in range(storm):
            sock = socket.socket()
            sock.setblocking(False)
            with contextlib.suppress(BlockingIOError):
                sock.connect(address(bus.url))
            sockets.append(sock)
        # A connection the full queue dropped stays in SYN_SENT: never writable while the bus is stopped.
        poller = select.poll()
        pending = {sock.fileno(): sock for sock in sockets}
        for fileno in pending:
            poller.register(fileno, select.POLLOUT)
        deadline = time.monotonic() + WAIT / 2
        while pending and time.monotonic() < deadline:
            for fileno, _ in poller.poll(100):
                if pending[fileno].getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) == 0:
                    poller.unregister(fileno)
                    del pending[fileno]
        established = storm - len(pending)
        assert established == storm
    finally:
        os.kill(bus.proc.pid, signal.SIGCONT)
        for sock in sockets:
            sock.close()


async def test_connections_beyond_the_cap_are_refused_at_once(bus_process: Start) -> None:
    """When every connection is a live stream, one more gets a 503 right away instead of hanging."""
    bus = bus_process("--header-timeout", "60", open_files=128)  # room for 64 connections
    streams = []
    try:
        for _ in range(64):
            reader, writer = await asyncio.open_connection(*address(bus.url))
            writer.write(b"GET /api/dev/events HTTP/1.1\r\nHost: localhost\r\n\r\n")
            async with asyncio.timeout(WAIT):
                await reader.readuntil(b"connected")
            streams.append(writer)
        started = time.monotonic()
        reader, writer = await asyncio.open_connection(*address(bus.url))
        writer.write(b"GET /api/dev/health HTTP/1.1\r\nHost: localhost\r\n\r\n")
        refusal = await closed_by_server(reader, within=WAIT)
        writer.close()
        assert refusal.startswith(b"HTTP/1.1 503") and b"Too many connections" in refusal
        assert time.monotonic() - started < WAIT / 2
    finally:
        for writer in streams:
            writer.close()
