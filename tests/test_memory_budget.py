"""What all peers hold together, against a real `devbus run`: raw ZMTP peers that misbehave on purpose, RSS measured.

Each test starts `devbus run` (with its defaults, unless a smaller budget makes the point
faster), attacks it with peers that misbehave on purpose over plain sockets (PING floods
that read no PONG, egress listeners and SSE subscribers that read nothing, a listener with
100,000 subscriptions), and judges from outside: the bus's peak resident memory (VmHWM)
against its RSS before, and whether a good publisher's events all reach an SSE subscriber
and a good ZeroMQ listener, in order, while it lasts.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import threading
import time
import urllib.request
from collections.abc import AsyncIterator, Callable

import aiohttp
import pytest
import zmq
import zmq.asyncio
from blackbox import Stalled, held_peers
from support import WAIT, BusProcess, connect_sender, rss, send_waiting, wait_until
from zmtp_peers import RawPeer

from devbus import AsyncPublisher
from devbus.frames import decode_event_frames, encode_frames
from devbus.zmtp import GREETING, command, message, ready

MIB = 1024 * 1024
Start = Callable[..., BusProcess]


def peak_rss(pid: int) -> int:
    """The most resident memory process ``pid`` has had (VmHWM), in bytes."""
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmHWM for process {pid}")


def metric(bus: BusProcess, name: str, **labels: str) -> float:
    """One sample of the bus's /metrics (0 if absent)."""
    with urllib.request.urlopen(f"{bus.url}/metrics", timeout=WAIT) as reply:
        text = reply.read().decode()
    wanted = name + ("{" + ",".join(f'{k}="{v}"' for k, v in labels.items()) + "}" if labels else "")
    for line in text.splitlines():
        if line.startswith(wanted + " "):
            return float(line.split()[-1])
    return 0.0


def address(endpoint: str) -> tuple[str, int]:
    host, _, port = endpoint.removeprefix("tcp://").rpartition(":")
    return host, int(port)


def deaf_peer(endpoint: str, greeting: bytes) -> socket.socket:
    """A raw ZMTP peer that sends ``greeting`` (its greeting, READY, ...) and never reads a byte.

    Its receive buffer is as small as the kernel allows, so the bus's writes back up at once.
    """
    peer = socket.socket()
    peer.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    peer.settimeout(WAIT)
    peer.connect(address(endpoint))
    peer.sendall(greeting)
    return peer


def flood(peer: socket.socket, wire: bytes, *, seconds: float, sent: list[int]) -> None:
    """Send ``wire`` again and again for ``seconds``, never reading; add the bytes sent to ``sent``.

    It ends when the time is up, or the bus closes the connection: a send the bus does not
    take (it stopped reading this peer) waits as long as the flood lasts.
    """
    deadline = time.monotonic() + seconds
    with contextlib.suppress(OSError):  # the time is up (TimeoutError), or the bus closed the connection
        while (left := deadline - time.monotonic()) > 0:
            peer.settimeout(left)
            peer.sendall(wire)
            sent[0] += len(wire)


class Witness:
    """A good SSE subscriber and a good ZeroMQ listener (both of ``good.*``), and a good publisher."""

    def __init__(self, bus: BusProcess, context: zmq.asyncio.Context) -> None:
        self.bus = bus
        self.listener = context.socket(zmq.SUB)
        self.listener.setsockopt(zmq.RCVHWM, 0)  # it takes everything the bus sends as it comes
        self.listener.subscribe(b"good.")
        self.listener.connect(bus.endpoints["egress"])
        self._sse_rest = b""

    async def deliver(self, count: int, *, size: int = 100) -> None:
        """Publish ``count`` events of ``size`` bytes; both must receive every one, in order."""
        timeout = aiohttp.ClientTimeout(total=None)
        async with (
            aiohttp.ClientSession(timeout=timeout) as session,
            session.get(f"{self.bus.url}/api/dev/events?types=good.*") as stream,
        ):
            assert stream.status == 200
            await self._listening()
            sse, zmq_, _ = await asyncio.gather(
                self._read_sse(stream, count), self._read_zmq(count), self._publish(count, size)
            )
        assert sse == list(range(count)), "the SSE subscriber lost or reordered events"
        assert zmq_ == list(range(count)), "the ZeroMQ listener lost or reordered events"

    async def _publish(self, count: int, size: int) -> None:
        blob = "x" * size
        async with AsyncPublisher(ingest=self.bus.endpoints["ingest"]) as publisher:
            for n in range(count):
                await publisher.emit("good.event", {"n": n, "blob": blob})

    async def _listening(self) -> None:
        """Return once the ZeroMQ listener gets events (the SSE stream does from its headers on)."""
        probe = {"event_type": "good.probe", "data": {}}
        async with asyncio.timeout(WAIT):
            while True:
                await asyncio.to_thread(self.bus.request, "POST", "/api/dev/webhook", probe)
                if await self.listener.poll(100):
                    return

    async def _read_sse(self, stream: aiohttp.ClientResponse, count: int) -> list[int]:
        seen: list[int] = []
        async with asyncio.timeout(WAIT * 6):
            while len(seen) < count:
                chunk = await stream.content.readany()
                assert chunk, "the SSE stream ended"
                frames = (self._sse_rest + chunk).split(b"\n\n")
                self._sse_rest = frames.pop()
                for frame in frames:
                    data = next((line[6:] for line in frame.split(b"\n") if line.startswith(b"data: ")), b"")
                    if b'"type":"good.event"' in data:
                        seen.append(json.loads(data)["data"]["n"])
        return seen

    async def _read_zmq(self, count: int) -> list[int]:
        seen: list[int] = []
        async with asyncio.timeout(WAIT * 6):
            while len(seen) < count:
                event = decode_event_frames(await self.listener.recv_multipart())
                if event.type == "good.event":
                    seen.append(event.data["n"])
        return seen


@pytest.fixture
async def witness(zmq_context: zmq.asyncio.Context) -> AsyncIterator[Callable[[BusProcess], Witness]]:
    """Make witnesses of a bus; their sockets are closed after the test."""
    made: list[Witness] = []

    def make(bus: BusProcess) -> Witness:
        made.append(Witness(bus, zmq_context))
        return made[-1]

    yield make
    for witness in made:
        witness.listener.close(linger=0)


@pytest.mark.slow
async def test_sse_subscribers_that_never_read_are_dropped_for_the_budget_and_others_get_every_event(
    bus_process: Start, witness: Callable[[BusProcess], Witness]
) -> None:
    """SSE subscribers count against the same budget: past it, the ones holding most are closed, not the readers."""
    bus = bus_process("--quiet", "--memory-budget", "8MiB")
    # Each with a filter of its own and named frames, so that nothing queued for one is shared.
    stalled = [Stalled(bus, f"/api/dev/events?named=1&types=*,s{n}") for n in range(20)]
    try:
        wait_until(lambda: stalled[-1].port in held_peers(bus), what="the bus holding the streams")
        await witness(bus).deliver(1000, size=8 * 1024)  # 8 MiB to each: 160 MiB at 4 MiB a subscriber
        dropped = metric(bus, "devbus_memory_dropped_total", peer="sse")
        assert dropped >= 10, f"only {dropped:.0f} subscribers dropped"
        memory = bus.health()["memory"]
        assert memory["held"] <= memory["budget"] == 8 * MIB
        # Those dropped are closed by the bus, not forgotten with their sockets open.
        wait_until(
            lambda: len(held_peers(bus) & {client.port for client in stalled}) <= 20 - dropped,
            within=1.0,
            what="the bus closing the dropped streams",
        )
    finally:
        for client in stalled:
            client.close()


def ping(context: bytes) -> bytes:
    """A PING with no TTL and ``context``."""
    return command(b"PING", b"\x00\x00" + context)


@pytest.mark.slow
@pytest.mark.parametrize(
    ("side", "peer_type", "largest"),
    [("ingest", b"PUB", MIB - 64), ("egress", b"SUB", 4096 - 64)],
    ids=["ingest", "egress"],
)
async def test_a_ping_flood_that_reads_no_pong_holds_bounded_memory_and_others_get_every_event(
    bus_process: Start, witness: Callable[[BusProcess], Witness], side: str, peer_type: bytes, largest: int
) -> None:
    """Regression: each PONG echoed the PING's whole context with no flow control: +270 MB/s, 3 GB in 11 s.

    Four peers send PINGs with the largest context the side takes (1 MiB on the ingest; 4 KiB
    on the egress, which refuses a longer command) as fast as the bus reads them, and read
    nothing back. (Small PINGs, whose PONGs are largest for their size, are in
    test_zmtp_conformance.py: the bus stops reading a peer that takes no PONG.)
    """
    bus = bus_process("--quiet")
    endpoint = bus.endpoints[side]
    before = rss(bus.proc.pid)
    wave = ping(b"c" * largest)
    peers = [deaf_peer(endpoint, GREETING + ready(peer_type)) for _ in range(4)]
    sent = [0]
    flooders = [
        threading.Thread(target=flood, args=(peer, wave), kwargs={"seconds": 6.0, "sent": sent}) for peer in peers
    ]
    try:
        for flooder in flooders:
            flooder.start()
        await witness(bus).deliver(2000)
        for flooder in flooders:
            await asyncio.to_thread(flooder.join, WAIT * 2)
        grown = peak_rss(bus.proc.pid) - before
        assert grown < 200 * MIB, f"the bus grew by {grown / MIB:.0f} MiB under {sent[0] / MIB:.0f} MiB of PINGs"
        assert bus.health()["status"] == "ok"
    finally:
        for peer in peers:
            peer.close()


@pytest.mark.slow
async def test_500_egress_listeners_that_never_read_hold_the_memory_budget_and_others_get_every_event(
    bus_process: Start, witness: Callable[[BusProcess], Witness]
) -> None:
    """Regression: --egress-buffer bounded each listener, not their number: 100 that never read held 1,665 MB."""
    bus = bus_process("--quiet")
    before = rss(bus.proc.pid)
    deaf = [deaf_peer(bus.endpoints["egress"], GREETING + ready(b"SUB") + message([b"\x01"])) for _ in range(500)]
    try:
        wait_until(
            lambda: metric(bus, "devbus_egress_listeners") >= 500, within=WAIT * 3, what="500 listeners subscribed"
        )
        await witness(bus).deliver(1000, size=24 * 1024)  # 24 MiB to each: 8 GB held at 16 MiB a listener
        grown = peak_rss(bus.proc.pid) - before
        dropped = metric(bus, "devbus_memory_dropped_total", peer="egress")
        assert grown < 256 * MIB, f"the bus grew by {grown / MIB:.0f} MiB"
        assert dropped >= 400, f"only {dropped:.0f} listeners dropped"  # those left hold 16 MiB each at most
        memory = bus.health()["memory"]
        assert memory["held"] <= memory["budget"] and memory["dropped"] == dropped
        assert sum("--memory-budget" in line for line in bus.lines) == 1  # once a minute
    finally:
        for peer in deaf:
            peer.close()


async def ingest_rate(bus: BusProcess, sender: zmq.asyncio.Socket, count: int, types: int) -> float:
    """Send ``count`` events over ZeroMQ, of ``types`` types in turn; return how many the bus took per second."""
    first = bus.health()["events"]
    started = time.monotonic()
    for n in range(count):
        await send_waiting(sender, encode_frames(f"load.t{n % types}", {"n": n}))
    await asyncio.to_thread(
        wait_until, lambda: bus.health()["events"] >= first + count, within=WAIT * 6, what="the bus taking the burst"
    )
    return count / (time.monotonic() - started)


@pytest.mark.slow
async def test_a_listener_with_100000_subscriptions_does_not_slow_the_ingest(
    bus_process: Start, zmq_context: zmq.asyncio.Context
) -> None:
    """Regression: each event was compared with every subscription: 100,000 cut the ingest from 46,011 to 601 events/s.

    The events cycle through 2,000 types, more than the egress keeps matches for, so each is
    matched again; a good listener takes all of them, so they are encoded and sent.
    """
    bus = bus_process("--quiet")
    good = zmq_context.socket(zmq.SUB)
    good.setsockopt(zmq.RCVHWM, 0)  # it takes every event as it comes, read at the end
    good.subscribe(b"load.")
    good.connect(bus.endpoints["egress"])
    sender = await connect_sender(zmq_context, bus.endpoints["ingest"])
    heavy = await RawPeer.connect(bus.endpoints["egress"])
    try:
        wait_until(lambda: metric(bus, "devbus_egress_listeners") >= 1, within=WAIT, what="the good listener")
        count, types = 10_000, 2000
        # The best of three bursts each way: a loaded machine slows some bursts, not the bus.
        alone = max([await ingest_rate(bus, sender, count, types) for _ in range(3)])
        await heavy.handshake(b"SUB")
        prefixes = [b"n%06d" % n for n in range(99_999)] + [b"load.t7"]
        heavy.send(b"".join(command(b"SUBSCRIBE", prefix) for prefix in prefixes) + ping(b"done"))
        assert await heavy.command(within=WAIT * 3) == (b"PONG", b"done")  # after every subscription
        assert metric(bus, "devbus_rejected_total", reason="zmq_subscriptions") == 0
        beside = max([await ingest_rate(bus, sender, count, types) for _ in range(3)])
        assert beside >= alone / 2, f"{beside:.0f} events/s beside the listener, {alone:.0f} without it"
        # The heavy listener gets what it subscribed to: load.t7, t70 to t79, t700 to t799, 5 each per burst.
        matching = 3 * (count // types) * 111
        got = [await heavy.message() for _ in range(matching)]
        assert all(frames[0].startswith(b"load.t7") for frames in got)
        async with asyncio.timeout(WAIT):
            taken = [decode_event_frames(await good.recv_multipart()).data["n"] for _ in range(6 * count)]
        assert taken == list(range(count)) * 6, "the good listener lost or reordered events"
        assert bus.health()["status"] == "ok"
    finally:
        await heavy.close()
        sender.close(linger=0)
        good.close(linger=0)
