"""The connection budget against a real `devbus run`: HTTP and ZeroMQ seated together, below the open-file limit.

Regression: 20,000 ZeroMQ peers that finished their handshake were counted nowhere and
never timed out; they took every descriptor of the bus, /health and /history timed out
and a new publisher delivered nothing.
"""

from __future__ import annotations

import asyncio
import json
import time
import urllib.error
import urllib.request
from collections.abc import Callable

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families
from support import WAIT, BusProcess, SSEReader, address, rss
from zmtp_peers import RawPeer, ping

import devbus
from devbus.bus import connection_budget
from devbus.bus.connection_budget import ConnectionBudget
from devbus.bus.metrics import Metrics
from devbus.zmtp import GREETING, message, ready

Start = Callable[..., BusProcess]
MIB = 1024 * 1024


class Peer:
    """A ZeroMQ connection as the budget sees it."""

    def __init__(self, *, held: bool = False) -> None:
        self.kept_waiting = held
        self.expired: list[str] = []

    def expire(self, kind: str, text: str) -> None:
        self.expired.append(kind)


async def test_http_may_take_every_seat_and_zeromq_all_but_the_last_sixteen() -> None:
    budget = ConnectionBudget(100, idle_timeout=300.0, metrics=Metrics())
    peers = [Peer() for _ in range(100)]
    assert [budget.seat(peer) for peer in peers].count(True) == 84
    assert [budget.take_http() for _ in range(20)].count(True) == 16
    assert budget.status() == {"limit": 100, "http": 16, "zmq": 84, "zmq_idle_timeout_s": 300.0}
    budget.close()


async def test_a_newcomer_displaces_only_a_peer_quiet_long_enough_and_never_one_the_bus_holds(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(connection_budget, "DISPLACE_QUIET", 0.2)
    budget = ConnectionBudget(8, idle_timeout=300.0, metrics=Metrics())  # 6 seats for ZeroMQ
    held, quiet, busy = Peer(held=True), Peer(), Peer()
    for peer in (held, quiet, busy, Peer(), Peer(), Peer()):
        assert budget.seat(peer)
    assert not budget.seat(Peer())  # nobody has been quiet for 0.2 s yet
    deadline = time.monotonic() + WAIT
    while not budget.seat(newcomer := Peer()):
        budget.touch(busy)
        assert time.monotonic() < deadline
        await asyncio.sleep(0.05)  # quiet time passing, polled
    assert (held.expired, quiet.expired, busy.expired) == ([], ["displaced"], [])
    assert newcomer.expired == []
    budget.close()


async def test_a_peer_the_bus_holds_is_not_idle() -> None:
    """The bus stops reading a sender while the store commits or subscribers catch up: its quiet is not its own."""
    budget = ConnectionBudget(100, idle_timeout=0.2, metrics=Metrics())
    held, idle = Peer(held=True), Peer()
    budget.seat(held)
    budget.seat(idle)
    deadline = time.monotonic() + WAIT
    while not idle.expired:
        assert time.monotonic() < deadline
        await asyncio.sleep(0.05)  # the idle timeout passing, polled
    assert (idle.expired, held.expired) == (["idle"], [])
    assert budget.status()["zmq"] == 1
    budget.close()


def metric(bus: BusProcess, name: str, **labels: str) -> float:
    """A sample of the bus's /metrics (0 if absent); asked again while the bus has no seat for the request."""
    deadline = time.monotonic() + WAIT
    while True:
        try:
            with urllib.request.urlopen(f"{bus.url}/metrics", timeout=WAIT) as reply:
                text = reply.read().decode()
            break
        except urllib.error.HTTPError as exc:
            if exc.code != 503 or time.monotonic() > deadline:
                raise
            time.sleep(0.05)  # polling for a free seat, bounded by the deadline
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return float(sample.value)
    return 0.0


def rejected(bus: BusProcess, reason: str) -> float:
    return metric(bus, "devbus_rejected_total", reason=reason)


async def seated(endpoint: str, socket_type: bytes) -> RawPeer | None:
    """A raw peer past its handshake, or None if the bus turned it away (closed, without an ERROR: see
    devbus/bus/endpoints.py)."""
    peer = await RawPeer.connect(endpoint)
    peer.send(GREETING + ready(socket_type))
    try:
        name, _ = await peer.command()
    except (EOFError, ConnectionError):
        await peer.close()
        assert not peer.received, "a peer given no seat was sent something"
        return None
    assert name == b"READY", name
    return peer


async def open_peers(endpoint: str, socket_type: bytes, count: int) -> tuple[list[RawPeer], int]:
    """Open ``count`` peers one after another; return those seated and how many were turned away."""
    opened = [await seated(endpoint, socket_type) for _ in range(count)]
    kept = [peer for peer in opened if peer is not None]
    return kept, count - len(kept)


async def open_stream(url: str) -> asyncio.StreamWriter:
    """An SSE stream over a raw connection, returned once its connected frame arrived."""
    reader, writer = await asyncio.open_connection(*address(url))
    writer.write(b"GET /api/dev/events HTTP/1.1\r\nHost: localhost\r\n\r\n")
    async with asyncio.timeout(WAIT):
        await reader.readuntil(b"connected")
    return writer


async def health_status(url: str) -> int:
    """GET /health over a fresh connection: its status, 503 if refused."""
    reader, writer = await asyncio.open_connection(*address(url))
    try:
        writer.write(b"GET /api/dev/health HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        async with asyncio.timeout(WAIT):
            head = await reader.readuntil(b"\r\n")
        return int(head.split(b" ", 2)[1])
    finally:
        writer.close()


async def closed(peer: RawPeer) -> bool:
    """Whether the bus has closed ``peer``'s connection (what it sent before is dropped)."""
    try:
        while True:
            await peer.next(within=0.05)
    except TimeoutError:
        return False
    except (EOFError, ConnectionError):
        return True


async def test_ready_zeromq_peers_past_the_descriptor_limit_leave_the_bus_serving(bus_process: Start) -> None:
    """Under `ulimit -n 256`, 360 READY'd peers: the surplus is turned away and counted, /health answers within
    2 s, and a new publisher and an SSE subscriber get every event."""
    bus = bus_process("--quiet", open_files=256)  # 192 seats: 176 for ZeroMQ, 16 kept for HTTP
    before = rss(bus.proc.pid)
    senders, _ = await open_peers(bus.endpoints["ingest"], b"PUB", 300)
    listeners, _ = await open_peers(bus.endpoints["egress"], b"SUB", 60)
    try:
        started = time.monotonic()
        assert await health_status(bus.url) == 200
        assert time.monotonic() - started < 2.0
        # Every peer holds a seat, was turned away, or gave its seat up to a newer one (the
        # flood takes over a second on a loaded machine): each counted.
        seats = bus.health()["connections"]["zmq"]
        assert seats <= 176
        assert rejected(bus, "zmq_connections") + rejected(bus, "zmq_displaced") == 360 - seats

        count = 1000
        async with aiohttp.ClientSession() as session:
            response = await session.get(f"{bus.url}/api/dev/events?types=good.*")
            assert response.status == 200
            stream = SSEReader(response)
            assert '"type":"connected"' in (await stream.event())["data"]
            # A newcomer displaces the quietest peer once one has been quiet for a second; until then it is
            # refused and its socket retries, and a publisher that closes while refused does not wait.
            async with devbus.AsyncPublisher(ingest=bus.endpoints["ingest"], timeout=WAIT) as publisher:
                await publisher.wait_for_bus()
                for n in range(count):
                    await publisher.emit("good.event", {"n": n})
            received = [json.loads((await stream.event())["data"])["data"]["n"] for _ in range(count)]
        assert received == list(range(count))
        assert rss(bus.proc.pid) - before < 64 * MIB
    finally:
        for peer in senders + listeners:
            await peer.close()


async def test_http_and_zeromq_draw_from_one_budget(bus_process: Start) -> None:
    """40 seats: 25 SSE streams leave ZeroMQ 5 (it never takes the last 10), HTTP the rest, and /health gets in
    by displacing a quiet ZeroMQ peer."""
    bus = bus_process("--quiet", "--max-connections", "40")
    streams = [await open_stream(bus.url) for _ in range(25)]
    peers, refused = await open_peers(bus.endpoints["ingest"], b"PUB", 10)
    try:
        assert (len(peers), refused) == (5, 5)
        assert rejected(bus, "zmq_connections") == 5
        streams += [await open_stream(bus.url) for _ in range(10)]  # the seats ZeroMQ may not take
        # Every seat is taken: /health displaces a ZeroMQ peer once one has been quiet for a second.
        deadline = time.monotonic() + WAIT
        while await health_status(bus.url) != 200:
            assert time.monotonic() < deadline, "/health never got a seat"
        # Reading /metrics needs a seat too, and may displace another peer: each closed one was counted.
        displaced = rejected(bus, "zmq_displaced")
        assert displaced >= 1
        assert [await closed(peer) for peer in peers].count(True) == displaced
    finally:
        for writer in streams:
            writer.close()
        for peer in peers:
            await peer.close()


async def test_quiet_zeromq_peers_are_closed_after_the_idle_timeout_and_busy_ones_are_not(
    bus_process: Start,
) -> None:
    """A sender that PINGs and a listener that is sent events stay; silent ones go, after the timeout, not before."""
    bus = bus_process("--quiet", "--zmq-idle-timeout", "1")
    ingest, egress = bus.endpoints["ingest"], bus.endpoints["egress"]
    quiet_sender, pinging = await seated(ingest, b"PUB"), await seated(ingest, b"PUB")
    quiet_listener, busy_listener = await seated(egress, b"SUB"), await seated(egress, b"SUB")
    assert quiet_sender and pinging and quiet_listener and busy_listener
    for listener, prefix in ((quiet_listener, b"nothing."), (busy_listener, b"tick")):
        listener.send(message([b"\x01" + prefix]) + ping(b"subscribed"))
        assert await listener.command() == (b"PONG", b"subscribed")  # read after the subscription
    assert not await closed(quiet_sender)  # idle is a while, not at once
    started = time.monotonic()
    ticks = 0
    async with aiohttp.ClientSession() as session:
        # Busy for three timeouts: a PING and an event every 0.2 s.
        while time.monotonic() - started < 3.0:
            pinging.send(ping(b"here"))
            answer = await session.post(f"{bus.url}/api/dev/webhook", json={"event_type": "tick", "data": {}})
            assert answer.status == 200
            ticks += 1
            await asyncio.sleep(0.2)  # the busy peers' pace, not a synchronisation
    async with asyncio.timeout(WAIT):
        await quiet_sender.closed()
        await quiet_listener.closed()
    assert rejected(bus, "zmq_idle") == 2
    # The busy ones are open, and got everything.
    pinging.send(ping(b"still"))
    items = [await pinging.next() for _ in range(ticks + 2)]  # the bus's subscription, the PONGs
    assert items[-1] == (b"PONG", b"still")
    assert [(await busy_listener.message())[0] for _ in range(ticks)] == [b"tick"] * ticks
    assert sum("(zmq_idle)" in line for line in bus.lines) == 2  # one line for the ingest, one for the egress
    for peer in (quiet_sender, pinging, quiet_listener, busy_listener):
        await peer.close()
