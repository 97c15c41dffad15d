"""ZMTP conformance of a real bus: every command, by hand, over plain sockets, on ingest and egress.

Each test connects a ``RawPeer`` (tests/zmtp_peers.py) to an in-process bus and writes the
exact bytes ZMTP 3.0/3.1 defines (https://rfc.zeromq.org/spec/23/ and /spec/37/): the
greeting, READY, PING with a TTL and a context, ERROR, SUBSCRIBE and CANCEL commands, the
3.0 subscription messages, and the ways a peer gets it wrong. What the bus does is judged
from the outside: the bytes it answers, whether it closes, what /metrics and the log say.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import string
import urllib.request
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import msgspec
import pytest
from support import WAIT, BusFactory, BusProcess, Client, post_batch, rss
from zmtp_peers import RawPeer, error, ping, raw_frame, ready_body, rejected, shorten_handshake

from devbus.bus.keys import BUDGET, ENDPOINTS
from devbus.zmtp import GREETING, command, message, ready

ANY_PORT = "tcp://127.0.0.1:*"
MIB = 1024 * 1024
MAX_MESSAGE = 2000  # the ingest's --max-message here, so that an oversize command is cheap to send
BUS_GREETING = b"\xff" + bytes(8) + b"\x7f" + b"\x03\x00" + b"NULL" + bytes(16) + b"\x00" + bytes(31)


@dataclass(frozen=True)
class Side:
    """One of the bus's ZeroMQ endpoints, as a peer sees it."""

    name: str
    peer_type: bytes  # the socket type a peer must announce
    bus_type: bytes  # the socket type the bus announces
    wrong_type: bytes  # the usual mistake: the other end's type


INGEST = Side("ingest", b"PUB", b"SUB", b"SUB")
EGRESS = Side("egress", b"SUB", b"PUB", b"PUB")


@pytest.fixture(params=[INGEST, EGRESS], ids=lambda side: side.name)
def side(request: pytest.FixtureRequest) -> Side:
    side: Side = request.param
    return side


@pytest.fixture
async def client(make_bus: BusFactory) -> Client:
    """An in-process bus with both ZeroMQ endpoints on free ports."""
    return await make_bus(ingest=ANY_PORT, egress=ANY_PORT, max_message=MAX_MESSAGE)


Peers = Callable[[Side], Awaitable[RawPeer]]


@pytest.fixture
async def peers(client: Client) -> AsyncIterator[Peers]:
    """Open raw peers to the bus's endpoints; every one is closed after the test."""
    opened: list[RawPeer] = []

    async def connect(side: Side) -> RawPeer:
        peer = await RawPeer.connect(client.app[ENDPOINTS][side.name])
        opened.append(peer)
        return peer

    yield connect
    for peer in opened:
        await peer.close()


async def ready_peer(peers: Peers, side: Side) -> RawPeer:
    """A raw peer past its handshake (for the ingest, past the bus's subscription too)."""
    peer = await peers(side)
    await peer.handshake(side.peer_type)
    if side is INGEST:
        assert await peer.message() == [b"\x01"]  # the bus subscribes to everything
    return peer


# -- the handshake ------------------------------------------------------------------------------


async def test_the_bus_greets_with_zmtp_3_null_and_announces_its_socket_type(peers: Peers, side: Side) -> None:
    peer = await peers(side)
    peer.send(GREETING + ready(side.peer_type))
    assert await peer.command() == (b"READY", ready_body({b"Socket-Type": side.bus_type}))
    expected = BUS_GREETING + b"\x04" + bytes([22 + len(side.bus_type)]) + b"\x05READY\x0bSocket-Type"
    expected += bytes(3) + bytes([len(side.bus_type)]) + side.bus_type
    if side is INGEST:
        expected += b"\x00\x01\x01"  # a ZMTP 3.0 subscription to every topic
        assert await peer.message() == [b"\x01"]
    assert peer.received == expected


# -- PING and PONG -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("context", "ttl"),
    [(b"", 0.0), (b"ctx-1234", 1.0), (bytes(range(16)), 6553.5)],
    ids=["empty-no-ttl", "context-1s-ttl", "16-bytes-longest-ttl"],
)
async def test_a_ping_is_answered_by_a_pong_echoing_its_context(
    peers: Peers, side: Side, context: bytes, ttl: float
) -> None:
    peer = await ready_peer(peers, side)
    before = len(peer.received)
    peer.send(ping(context, ttl=ttl))
    assert await peer.command() == (b"PONG", context)
    assert peer.received[before:] == b"\x04" + bytes([5 + len(context)]) + b"\x04PONG" + context


async def test_a_pong_echoes_at_most_16_bytes_of_context_as_libzmq_does(peers: Peers, side: Side) -> None:
    """Regression: a PONG echoed the whole context, so every PING of 1 MiB made the bus write 1 MiB."""
    peer = await ready_peer(peers, side)
    peer.send(ping(bytes(range(100))))
    assert await peer.command() == (b"PONG", bytes(range(16)))


async def test_a_peer_silent_past_the_ttl_of_its_ping_is_closed(peers: Peers, side: Side) -> None:
    """ZMTP 3.1: a PING's TTL tells the other side to drop the connection if nothing more arrives in that time."""
    peer = await ready_peer(peers, side)
    peer.send(ping(b"ttl", ttl=0.1))
    assert await peer.command() == (b"PONG", b"ttl")
    await peer.closed(within=2.0)


async def test_a_peer_that_goes_on_talking_after_a_ping_with_a_ttl_stays(peers: Peers, side: Side) -> None:
    """Anything received meets the TTL; only the first PING after that sets it again, as in libzmq."""
    peer = await ready_peer(peers, side)
    peer.send(ping(b"ttl", ttl=0.3))
    for n in range(12):  # 0.6 s in all, twice the TTL, never 0.3 s silent
        await asyncio.sleep(0.05)  # the peer's pace: what is tested is that it is never silent long
        peer.send(ping(b"%d" % n, ttl=0.3 if n % 2 else 0.0))
    for n in range(-1, 12):
        assert (await peer.command())[0] == b"PONG", n
    peer.send(ping(b"still"))
    assert await peer.command() == (b"PONG", b"still")


def flood_until_stalled(endpoint: str, greeting: bytes, wire: bytes, *, limit: int) -> int:
    """Greet, then send ``wire`` over and over, reading nothing; return the bytes sent once a send waits 1 s.

    Gives up (and returns what it sent) after ``limit`` bytes: the bus never stopped reading.
    """
    host, _, port = endpoint.removeprefix("tcp://").rpartition(":")
    with socket.socket() as peer:
        peer.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        peer.connect((host, int(port)))
        peer.sendall(greeting)
        peer.settimeout(1.0)
        sent = 0
        with contextlib.suppress(TimeoutError):
            while sent < limit:
                peer.sendall(wire)
                sent += len(wire)
        return sent


async def test_a_peer_that_reads_no_pong_is_read_no_more_and_holds_bounded_memory(client: Client, side: Side) -> None:
    """Regression: every PING was answered whether or not the peer read its PONGs: +270 MB/s of PONGs.

    A PONG goes through the connection's flow control like any write: once the peer's socket
    is backed up the bus reads nothing more from it, so what waits for it stays at the
    high-water mark, and the peer's own sends wait.
    """
    wire = ping(bytes(16)) * 4096  # 100 KiB of the PINGs whose PONGs are largest for their size
    limit = 256 * MIB
    sent = await asyncio.to_thread(
        flood_until_stalled, client.app[ENDPOINTS][side.name], GREETING + ready(side.peer_type), wire, limit=limit
    )
    assert sent < limit, "the bus read PINGs from a peer that read none of its PONGs, for ever"
    held = client.app[BUDGET].held()
    assert held <= 256 * 1024, f"{held} bytes held for one peer"


async def test_unknown_commands_are_ignored(peers: Peers, side: Side) -> None:
    """Commands a later ZMTP may add must not cost the connection."""
    peer = await ready_peer(peers, side)
    peer.send(command(b"X-FUTURE", b"\x00anything") + command(b"", b"") + ping(b"after"))
    assert await peer.command() == (b"PONG", b"after")


# -- refusals --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Refusal:
    """A peer the bus must refuse: what it sends, and what the bus's reason names."""

    name: str
    wire: Callable[[Side], bytes]
    says: str  # in the log line and, where ZMTP lets the bus say why, in its ERROR
    told: bool = False  # whether the peer speaks ZMTP 3, so that an ERROR command can tell it why


def mechanism(name: bytes) -> bytes:
    return GREETING[:12] + name.ljust(20, b"\x00") + GREETING[32:]


REFUSALS = [
    Refusal("wrong-socket-type", lambda side: GREETING + ready(side.wrong_type), "cannot connect", told=True),
    Refusal("no-socket-type", lambda side: GREETING + command(b"READY", b""), "cannot connect", told=True),
    Refusal("curve", lambda side: mechanism(b"CURVE"), "CURVE", told=True),
    Refusal("plain", lambda side: mechanism(b"PLAIN") + command(b"HELLO", b"\x04user\x04pass"), "PLAIN", told=True),
    # A libzmq 3.x peer: signature, revision 1, its socket type, an empty identity, then it waits.
    Refusal("zmtp-2", lambda side: b"\xff" + bytes(8) + b"\x7f\x01\x01\x00\x00", "too old"),
    Refusal("not-zeromq", lambda side: b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n", "not a ZeroMQ peer"),
    Refusal(
        "oversize-command",
        lambda side: GREETING + ready(side.peer_type) + raw_frame(b"", size=1 << 40, command=True, long=True),
        "over the limit",
        told=True,
    ),
]
refusals = pytest.mark.parametrize("refusal", REFUSALS, ids=[refusal.name for refusal in REFUSALS])
# The reason each refusal is counted under: the step of the handshake that failed.
REASONS = {
    "wrong-socket-type": "zmq_socket_type",
    "no-socket-type": "zmq_socket_type",
    "curve": "zmq_mechanism",
    "plain": "zmq_mechanism",
    "zmtp-2": "zmq_version",
    "not-zeromq": "zmq_greeting",
    "oversize-command": "zmq_handshake",
}


@refusals
async def test_a_peer_that_breaks_the_protocol_is_closed_at_once_and_the_others_are_served(
    peers: Peers, side: Side, refusal: Refusal, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Refused when its bytes say so, not when the handshake deadline passes; logged saying why."""
    shorten_handshake(monkeypatch, 3600.0)
    caplog.set_level(logging.INFO, logger="devbus")
    bystander = await ready_peer(peers, side)
    peer = await peers(side)
    peer.send(refusal.wire(side))
    await peer.closed()
    assert refusal.says in caplog.text
    bystander.send(ping(b"still-here"))
    assert await bystander.command() == (b"PONG", b"still-here")


@refusals
async def test_a_refused_peer_is_counted(
    peers: Peers, side: Side, refusal: Refusal, client: Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    shorten_handshake(monkeypatch, 3600.0)
    peer = await peers(side)
    peer.send(refusal.wire(side))
    await peer.closed()
    assert await rejected(client, REASONS[refusal.name]) == 1


@pytest.mark.parametrize("refusal", [refusal for refusal in REFUSALS if refusal.told], ids=lambda refusal: refusal.name)
async def test_a_peer_refused_at_its_handshake_is_told_why_with_an_error_command(
    peers: Peers, side: Side, refusal: Refusal
) -> None:
    """ZMTP 3: ``error = command-size %d5 "ERROR" error-reason``, a reason of at most 255 printable bytes."""
    peer = await peers(side)
    peer.send(refusal.wire(side))
    items = await peer.closed()
    assert items, "the bus closed without a word"
    last = items[-1]
    assert isinstance(last, tuple), f"the bus's last word was not a command: {last!r}"
    name, body = last
    assert name == b"ERROR"
    reason = body[1:]
    assert body[0] == len(reason) > 0
    assert set(reason.decode("ascii")) <= set(string.printable) - set("\r\n\t\x0b\x0c")
    assert peer.received.endswith(b"\x04" + bytes([6 + len(body)]) + b"\x05ERROR" + body)
    named = {"wrong-socket-type": side.wrong_type.decode(), "curve": "CURVE", "plain": "PLAIN"}
    assert named.get(refusal.name, "") in reason.decode()


@pytest.mark.parametrize("refusal", [refusal for refusal in REFUSALS if not refusal.told], ids=lambda r: r.name)
async def test_a_peer_that_does_not_speak_zmtp_3_is_closed_without_an_error_it_could_not_read(
    peers: Peers, side: Side, refusal: Refusal
) -> None:
    peer = await peers(side)
    peer.send(refusal.wire(side))
    items = await peer.closed()
    assert not any(isinstance(item, tuple) and item[0] == b"ERROR" for item in items), items


@pytest.mark.parametrize("after_ready", [True, False], ids=["after-ready", "instead-of-ready"])
async def test_a_peer_that_sends_error_is_closed_and_counted(
    peers: Peers, side: Side, after_ready: bool, client: Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    """ZMTP 3: a peer that sends ERROR closes; the bus closes its side at once (not at a deadline), unanswered."""
    shorten_handshake(monkeypatch, 3600.0)
    if after_ready:
        peer = await ready_peer(peers, side)
        peer.send(error(b"shutting down"))
    else:
        peer = await peers(side)
        peer.send(GREETING + error(b"no thanks"))
    items = await peer.closed(within=2.0)
    assert not any(isinstance(item, tuple) and item[0] == b"ERROR" for item in items), items
    assert await rejected(client, "zmq_error") == 1


# -- deadlines ---------------------------------------------------------------------------------


STALLS = {
    "partial-greeting": GREETING[:20],
    "greeting-without-ready": GREETING,
    "ready-cut-short": GREETING + ready(b"PUB")[:10],
}


@pytest.mark.parametrize("sent", list(STALLS.values()), ids=list(STALLS))
async def test_a_peer_that_stalls_in_its_handshake_is_closed_at_the_deadline(
    peers: Peers, side: Side, sent: bytes, monkeypatch: pytest.MonkeyPatch
) -> None:
    shorten_handshake(monkeypatch, 0.3)
    started = asyncio.get_running_loop().time()  # before connecting: the deadline runs from the connection
    peer = await peers(side)
    peer.send(sent)
    await peer.closed()
    assert asyncio.get_running_loop().time() - started >= 0.3


async def test_the_handshake_deadline_holds_however_slowly_the_bytes_trickle(
    peers: Peers, side: Side, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A byte every 50 ms would take 3.2 s to greet: the deadline counts from the connection, not per byte."""
    shorten_handshake(monkeypatch, 0.3)
    peer = await peers(side)
    sent = 0

    async def trickle() -> None:
        nonlocal sent
        for byte in GREETING:
            peer.send(bytes([byte]))
            sent += 1
            await asyncio.sleep(0.05)  # the peer's pace, not a wait for the bus

    trickling = asyncio.create_task(trickle())
    try:
        await peer.closed()
    finally:
        trickling.cancel()
    assert sent < len(GREETING)


# -- egress subscriptions ------------------------------------------------------------------------


def subscribe(prefix: bytes, *, form: str) -> bytes:
    """A subscription: a ZMTP 3.1 SUBSCRIBE command, or a ZMTP 3.0 message of 1 and the prefix."""
    return command(b"SUBSCRIBE", prefix) if form == "command" else message([b"\x01" + prefix])


def cancel(prefix: bytes, *, form: str) -> bytes:
    """A cancellation: a ZMTP 3.1 CANCEL command, or a ZMTP 3.0 message of 0 and the prefix."""
    return command(b"CANCEL", prefix) if form == "command" else message([b"\x00" + prefix])


async def settle(peer: RawPeer, client: Client, marker: str) -> None:
    """Publish ``marker`` until it reaches ``peer``: its subscription to it, and all sent before, are in force."""
    while True:
        await post_batch(client, [(marker, {})])
        try:
            while (head := (await peer.message(within=0.2))[0]) != marker.encode():
                assert head.startswith(b"marker."), head  # an earlier marker, late; nothing else
            return
        except TimeoutError:
            continue


async def received(peer: RawPeer, until: str) -> list[dict[str, Any]]:
    """The envelopes ``peer`` gets up to the event of type ``until`` (not included), markers left out."""
    envelopes: list[dict[str, Any]] = []
    while True:
        head, body = await peer.message()
        envelope: dict[str, Any] = msgspec.msgpack.decode(body)
        assert head == envelope["type"].encode()
        if envelope["type"] == until:
            return envelopes
        if not envelope["type"].startswith("marker."):
            envelopes.append(envelope)


@pytest.mark.parametrize("form", ["command", "message"], ids=["zmtp-3.1-commands", "zmtp-3.0-messages"])
async def test_a_listener_gets_the_events_it_subscribed_to_until_it_cancels(
    peers: Peers, client: Client, form: str
) -> None:
    peer = await ready_peer(peers, EGRESS)
    peer.send(subscribe(b"match.", form=form) + subscribe(b"marker.a", form=form))
    await settle(peer, client, "marker.a")

    ids = await post_batch(
        client, [("match.one", {"n": 0}), ("other.two", {"n": 1}), ("match.three", {"n": 2}), ("marker.a.end", {})]
    )
    envelopes = await received(peer, until="marker.a.end")
    assert [(e["id"], e["type"], e["data"]) for e in envelopes] == [
        (ids[0], "match.one", {"n": 0}),
        (ids[2], "match.three", {"n": 2}),
    ]
    assert all(set(e) == {"id", "type", "data", "timestamp", "source"} for e in envelopes)

    peer.send(cancel(b"match.", form=form) + subscribe(b"marker.b", form=form))
    await settle(peer, client, "marker.b")
    await post_batch(client, [("match.four", {}), ("other.five", {}), ("marker.b.end", {})])
    assert await received(peer, until="marker.b.end") == []


@pytest.mark.slow
def test_a_listeners_subscriptions_are_bounded(bus_process: Callable[..., BusProcess]) -> None:
    """SPEC: egress subscriptions are bounded. A listener may be refused past the bound, never grow the bus."""
    bus = bus_process("--quiet")
    host, _, port = bus.endpoints["egress"].removeprefix("tcp://").rpartition(":")
    with socket.create_connection((host, int(port)), timeout=WAIT) as listener:
        listener.sendall(GREETING + ready(b"SUB"))
        received = b""
        while len(received) < len(GREETING) + len(ready(b"PUB")):
            received += listener.recv(4096)
        before = rss(bus.proc.pid)
        with contextlib.suppress(ConnectionError):  # refused past the bound: as good as ignored
            for n in range(20_000):
                listener.sendall(command(b"SUBSCRIBE", b"%08d" % n + b"x" * 3992))
            listener.sendall(ping(b"done"))
            while b"\x04PONGdone" not in received and (chunk := listener.recv(65536)):
                received += chunk  # the PONG follows every subscription read before it
        grown = rss(bus.proc.pid) - before
    assert grown < 16 * MIB, f"the bus grew by {grown / MIB:.0f} MB"
    assert bus.health()["status"] == "ok"
    with urllib.request.urlopen(f"{bus.url}/metrics", timeout=WAIT) as reply:
        counted = reply.read().decode()
    assert 'devbus_rejected_total{reason="zmq_subscriptions"}' in counted  # refusals are seen
    assert sum("refused a ZeroMQ egress subscription (zmq_subscriptions)" in line for line in bus.lines) == 1
