"""The bus against independent ZeroMQ implementations: pyzmq, zeromq.js (v6) and libzmq from C.

Each library runs as its own process (tests/interop/*/peer.*, one contract for all three)
as a PUB, an XPUB or a SUB, over tcp:// and ipc://, with ZMTP heartbeats on. Between it
and the bus sits a ``Tap`` that relays every byte unchanged and notes the commands, so a
test sees the library's PINGs answered by the bus's PONGs over several intervals on one
connection (a bus that stops answering makes the library drop and reconnect, which the tap counts).
Every case sends a known set of events and checks each arrives exactly once, in order,
with the right envelope.
"""

from __future__ import annotations

import asyncio
import re
import shutil
import struct
import subprocess
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgspec
import pytest
from support import ROOT, WAIT, BusFactory, Client, eventually, post_batch, require_file
from zmtp_peers import Tap

from devbus.bus.keys import ENDPOINTS

INTEROP = ROOT / "tests" / "interop"
HEARTBEAT_MS = 100  # the libraries' PING interval; they give up on a bus silent for 10 of them
HEARTBEATS = 5  # PONGs the bus must have sent on one connection before the events go
TIMESTAMP = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z")

# The known set: small and long frames (a 70 kB event crosses the bus's 64 KiB reads), text
# beyond ASCII, nesting, an empty object; "interop.end" closes it.
EVENTS: list[tuple[str, dict[str, Any]]] = [("interop.event", {"n": n}) for n in range(200)]
EVENTS[5] = ("interop.event", {"n": 5, "text": "héllo ✓ 日本 🎉"})
EVENTS[7] = ("interop.event", {"n": 7, "pad": "x" * 70_000})
EVENTS[9] = ("interop.event.nested", {"n": 9, "tree": {"a": [1, 2.5, {"b": None, "c": True}]}})
EVENTS[11] = ("interop.empty", {})
EVENTS.append(("interop.end", {}))


@dataclass(frozen=True)
class Library:
    """An independent ZeroMQ implementation and how to start its peer program."""

    name: str
    command: Callable[[Path], list[str]]  # argv before the role, given a folder to build in


def python_peer(build: Path) -> list[str]:
    return [sys.executable, str(INTEROP / "python" / "peer.py")]


def node_peer(build: Path) -> list[str]:
    node = shutil.which("node")
    require_file(Path(node or "/usr/bin/node"), "node is not installed (Debian: apt-get install nodejs npm)")
    modules = INTEROP / "node" / "node_modules" / "zeromq"
    require_file(modules, f"zeromq.js is not installed (run `npm ci --prefix {INTEROP.relative_to(ROOT)}/node`)")
    return [str(node), str(INTEROP / "node" / "peer.mjs")]


def c_peer(build: Path) -> list[str]:
    gcc = shutil.which("gcc")
    require_file(Path(gcc or "/usr/bin/gcc"), "gcc is not installed (Debian: apt-get install gcc libc6-dev)")
    require_file(Path("/usr/include/zmq.h"), "libzmq's headers are missing (Debian: apt-get install libzmq3-dev)")
    binary = build / "peer"
    if not binary.exists():
        subprocess.run(
            [str(gcc), "-O1", "-Wall", "-Werror", "-o", str(binary), str(INTEROP / "c" / "peer.c"), "-lzmq"],
            check=True,
            timeout=120,
        )
    return [str(binary)]


LIBRARIES = [Library("pyzmq", python_peer), Library("node", node_peer), Library("c", c_peer)]
CASES = [
    pytest.param(library, role, transport, id=f"{library.name}-{role}-{transport}")
    for library in LIBRARIES
    for role in ("pub", "xpub", "sub")
    for transport in ("tcp", "ipc")
]


class PeerProcess:
    """A library's peer program: lines to its stdin, lines from its stdout."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc

    async def say(self, *lines: str) -> None:
        """Write ``lines`` to the peer."""
        assert self.proc.stdin is not None
        self.proc.stdin.write("".join(line + "\n" for line in lines).encode())
        await self.proc.stdin.drain()

    async def line(self, *, within: float = WAIT) -> str:
        """The next line the peer printed."""
        assert self.proc.stdout is not None
        async with asyncio.timeout(within):
            line = await self.proc.stdout.readline()
        assert line, f"the peer exited: {await self.errors()}"
        return line.decode().rstrip("\n")

    async def finish(self) -> None:
        """End its stdin and wait for a clean exit (its socket closed after flushing)."""
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        async with asyncio.timeout(WAIT):
            code = await self.proc.wait()
        assert code == 0, await self.errors()

    async def errors(self) -> str:
        assert self.proc.stderr is not None
        return (await self.proc.stderr.read()).decode(errors="replace")


@pytest.fixture(scope="module")
def build(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder where the C peer is compiled once for the module."""
    return tmp_path_factory.mktemp("interop")


@pytest.fixture
async def start_peer(build: Path) -> AsyncIterator[Callable[[Library, str, str, str], Awaitable[PeerProcess]]]:
    """Start library peers; every one still running at the end is killed."""
    started: list[PeerProcess] = []

    async def start(library: Library, role: str, endpoint: str, prefix: str = "") -> PeerProcess:
        command = [*library.command(build), role, endpoint, str(HEARTBEAT_MS), *([prefix] if prefix else [])]
        proc = await asyncio.create_subprocess_exec(
            *command,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            limit=1 << 22,  # a line is a whole message in hex
        )
        peer = PeerProcess(proc)
        started.append(peer)
        return peer

    yield start
    for peer in started:
        if peer.proc.returncode is None:
            peer.proc.kill()
            await peer.proc.wait()


def wire(event_type: str, data: dict[str, Any], *, source: str) -> str:
    """One ingest message as a peer's input line: its two frames in hex."""
    body = msgspec.msgpack.encode({"type": event_type, "data": data, "source": source})
    return f"{event_type.encode().hex()} {body.hex()}"


async def retained(client: Client, types: str) -> list[dict[str, Any]]:
    response = await client.get("/api/dev/history", params={"types": types, "limit": "10000"})
    assert response.status == 200, await response.text()
    events: list[dict[str, Any]] = (await response.json())["events"]
    return events


def envelope(line: str) -> dict[str, Any]:
    """A SUB peer's line as the envelope it carries, checking its first frame is the type."""
    head, body = (bytes.fromhex(frame) for frame in line.split(" "))
    decoded: dict[str, Any] = msgspec.msgpack.decode(body)
    assert head == decoded["type"].encode()
    return decoded


async def heartbeats_flow(tap: Tap) -> None:
    """Wait until the bus has answered HEARTBEATS PINGs on the tapped connection."""

    async def answered() -> bool:
        return len(tap.sent("bus", b"PONG")) >= HEARTBEATS

    await eventually(answered)


async def send_events(client: Client, peer: PeerProcess, role: str, tap: Tap, source: str) -> None:
    """A publishing peer sends EVENTS; each reaches the bus once, in order, with its envelope."""
    if role == "pub":
        await peer.say(wire("warmup.tick", {}, source=source))

        async def warm() -> bool:
            return bool(await retained(client, "warmup.*"))

        await eventually(warm)  # the bus's subscription reached the PUB: nothing sent from now on is dropped
        await peer.say("go")
    else:
        assert await peer.line() == "subscribed"
    await heartbeats_flow(tap)
    await peer.say(*(wire(t, d, source=source) for t, d in EVENTS))
    await peer.finish()

    async def ended() -> bool:
        return any(event["type"] == "interop.end" for event in await retained(client, "interop.*"))

    await eventually(ended)
    events = await retained(client, "interop.*")
    assert [(e["type"], e["data"], e["source"]) for e in events] == [(t, d, source) for t, d in EVENTS]
    assert len({e["id"] for e in events}) == len(EVENTS)
    assert all(TIMESTAMP.fullmatch(e["timestamp"]) for e in events)


async def receive_events(client: Client, peer: PeerProcess, tap: Tap) -> None:
    """A SUB peer subscribed to "interop." gets exactly EVENTS, in order, and none of the others."""
    while True:  # publish a marker until one arrives: the SUB's subscription is in force
        await post_batch(client, [("interop.sync", {})])
        try:
            assert envelope(await peer.line(within=0.2))["type"] == "interop.sync"
            break
        except TimeoutError:
            continue
    await heartbeats_flow(tap)
    others = [("other.event", {"n": n}) for n in range(len(EVENTS))]
    mixed = [event for pair in zip(others, EVENTS, strict=True) for event in pair]
    ids = (await post_batch(client, mixed))[1::2]
    got: list[dict[str, Any]] = []
    while not got or got[-1]["type"] != "interop.end":
        received = envelope(await peer.line())
        if received["type"] != "interop.sync":
            got.append(received)
    assert [{k: v for k, v in e.items() if k != "timestamp"} for e in got] == [
        {"id": id_, "type": t, "data": d, "source": "http"} for id_, (t, d) in zip(ids, EVENTS, strict=True)
    ]
    assert all(TIMESTAMP.fullmatch(e["timestamp"]) for e in got)
    await peer.finish()


@pytest.mark.parametrize(("library", "role", "transport"), CASES)
async def test_a_library_peer_exchanges_every_event_once_in_order_with_heartbeats(
    library: Library,
    role: str,
    transport: str,
    make_bus: BusFactory,
    start_peer: Callable[..., Awaitable[PeerProcess]],
    tmp_path: Path,
) -> None:
    any_port = "tcp://127.0.0.1:*"
    ipc = f"ipc://{tmp_path}"
    client = await make_bus(
        ingest=f"{ipc}/ingest.sock" if transport == "ipc" else any_port,
        egress=f"{ipc}/egress.sock" if transport == "ipc" else any_port,
    )
    tap = Tap(client.app[ENDPOINTS]["egress" if role == "sub" else "ingest"])
    endpoint = await tap.start(f"{ipc}/tap.sock" if transport == "ipc" else any_port)
    try:
        try:
            if role == "sub":
                peer = await start_peer(library, role, endpoint, "interop.")
                await receive_events(client, peer, tap)
            else:
                peer = await start_peer(library, role, endpoint)
                await send_events(client, peer, role, tap, source=f"interop-{library.name}")
        except TimeoutError as exc:
            pongs = len(tap.sent("bus", b"PONG"))
            raise AssertionError(f"timed out with {tap.connections} connection(s) and {pongs} PONGs seen") from exc
        # One connection all along: no heartbeat went unanswered, nothing reconnected.
        assert tap.connections == 1
        pings = tap.sent("peer", b"PING")
        assert {ping[:2] for ping in pings} == {struct.pack(">H", HEARTBEAT_MS * 30 // 100)}  # TTL in tenths
        assert set(tap.sent("bus", b"PONG")) <= {ping[2:] for ping in pings}  # each echoes a PING's context
    finally:
        await tap.close()
