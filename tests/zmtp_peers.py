"""ZeroMQ peers for the conformance and interop tests: wire builders, a hand-written peer, a tap.

- ``raw_frame``, ``ready_body``, ``ping``, ``error``, ``cut``, ``decoded``: the ZMTP wire by hand.
- ``RawPeer``: a ZMTP peer over a plain socket, sending exactly the bytes a test gives it.
- ``Tap``: a relay between a ZeroMQ library and the bus that forwards every byte unchanged
  and notes the commands each side sends, so a test sees PING and PONG really flow.
- ``publish``, ``rejected``, ``shorten_handshake``: events into the bus, what it counted, its
  deadlines made short.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import struct
from collections import deque
from collections.abc import Iterable, Iterator
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families
from support import WAIT, Client

from devbus.bus import zmtp_peer
from devbus.zmtp import GREETING, FrameReader, Greeting, HandshakeError, Rejected, command, ready

Item = list[bytes] | tuple[bytes, bytes] | str  # a message, a command (name, body), or a refusal's reason

# -- the wire by hand --------------------------------------------------------------------------


def raw_frame(
    body: bytes,
    *,
    more: bool = False,
    long: bool = False,
    command: bool = False,
    flags: int | None = None,
    size: int | None = None,
) -> bytes:
    """One frame: ``body`` behind a header with the given flags and announced ``size`` (else its length).

    ``long`` uses the 8-byte size even for a short body (ZMTP allows it); ``flags`` sets the
    low three bits (MORE, LONG, COMMAND) directly, the size encoding following the LONG bit.
    """
    if flags is None:
        flags = (0x01 if more else 0) | (0x02 if long or len(body) > 255 else 0) | (0x04 if command else 0)
    announced = len(body) if size is None else size
    if flags & 0x02:
        return bytes([flags]) + struct.pack(">Q", announced) + body
    return bytes([flags, announced & 0xFF]) + body


def ready_body(properties: dict[bytes, bytes]) -> bytes:
    """A READY command's body (after its name): each property as name-size, name, value-size, value."""
    return b"".join(
        bytes([len(name)]) + name + struct.pack(">I", len(value)) + value for name, value in properties.items()
    )


def error(reason: bytes) -> bytes:
    """A ZMTP ERROR command with ``reason`` (at most 255 bytes)."""
    return command(b"ERROR", bytes([len(reason)]) + reason)


def ping(context: bytes, *, ttl: float = 0.0) -> bytes:
    """A ZMTP 3.1 PING with a time-to-live (seconds, sent in tenths) and a context of up to 16 bytes."""
    return command(b"PING", struct.pack(">H", round(ttl * 10)) + context)


def cut(data: bytes, sizes: bytes) -> Iterator[bytes]:
    """``data`` as reads of 1 + each byte of ``sizes`` bytes in turn (cycling); whole when ``sizes`` is empty.

    ``b"\\x00"`` gives byte-by-byte reads; the sizes are bytes rather than a list of integers
    because hypothesis draws a byte string about ten times faster.
    """
    if not sizes:
        yield data
        return
    at = 0
    for size in itertools.cycle(sizes):
        if at >= len(data):
            return
        yield data[at : at + size + 1]
        at += size + 1


def frames_from(blob: bytes) -> bytes:
    """Frame-shaped random wire from ``blob``: every 4 bytes one frame of random flags and sizes.

    Random bytes rarely form a long frame announcing a small size; this makes them common,
    and bodies that are shorter or longer than announced too.
    """
    wire = b""
    for at in range(0, len(blob) - 3, 4):
        flags, high, low, fill = blob[at : at + 4]
        announced = (high << 8 | low) % 1300
        actual = announced if fill < 200 else fill
        wire += raw_frame(bytes([fill]) * actual, flags=flags & 0x07, size=announced)
    return wire


def decoded(items: Iterable[list[bytes] | tuple[bytes, bytes] | Rejected]) -> list[Item]:
    """A FrameReader's output in comparable form: refusals as their metrics reason."""
    return [item.reason if isinstance(item, Rejected) else item for item in items]


# -- a peer by hand --------------------------------------------------------------------------

# What a test peer reads from the bus: large enough for any event the tests send.
READ_LIMIT = 1 << 24


async def open_stream(endpoint: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A plain connection to a tcp://HOST:PORT or ipc://PATH endpoint."""
    if endpoint.startswith("ipc://"):
        return await asyncio.open_unix_connection(endpoint.removeprefix("ipc://"))
    host, _, port = endpoint.removeprefix("tcp://").rpartition(":")
    return await asyncio.open_connection(host.strip("[]"), int(port))


class RawPeer:
    """A ZeroMQ peer written by hand: it sends exactly the bytes a test gives it, and parses what the bus sends.

    ``received`` keeps every byte from the bus, for assertions on the exact wire.
    """

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.received = b""
        self._reader = reader
        self._writer = writer
        self._greeting = Greeting()
        self._frames = FrameReader(max_message=READ_LIMIT, max_frames=1 << 10)
        self._items: deque[Item] = deque()

    @classmethod
    async def connect(cls, endpoint: str) -> RawPeer:
        """Open a connection to ``endpoint``; nothing is sent yet."""
        return cls(*await open_stream(endpoint))

    def send(self, data: bytes) -> None:
        """Write ``data`` as it is."""
        self._writer.write(data)

    async def handshake(self, socket_type: bytes) -> None:
        """Greet as ZMTP 3.0 NULL, say READY as ``socket_type``, and wait for the bus's READY."""
        self.send(GREETING + ready(socket_type))
        name, _ = await self.command()
        assert name == b"READY", name

    async def next(self, *, within: float = WAIT) -> Item:
        """The next message, command or refusal the bus sent (after its greeting)."""
        async with asyncio.timeout(within):
            while not self._items:
                chunk = await self._reader.read(65536)
                if not chunk:
                    raise EOFError("the bus closed the connection")
                self._take(chunk)
        return self._items.popleft()

    async def command(self, *, within: float = WAIT) -> tuple[bytes, bytes]:
        """The next item, which must be a command: (name, body)."""
        item = await self.next(within=within)
        assert isinstance(item, tuple), f"expected a command, got {item!r}"
        return item

    async def message(self, *, within: float = WAIT) -> list[bytes]:
        """The next item, which must be a message: its frames."""
        item = await self.next(within=within)
        assert isinstance(item, list), f"expected a message, got {item!r}"
        return item

    async def closed(self, *, within: float = WAIT) -> list[Item]:
        """Wait until the bus closes the connection; return what it sent before."""
        async with asyncio.timeout(within):
            with contextlib.suppress(ConnectionResetError):
                while chunk := await self._reader.read(65536):
                    self._take(chunk)
        items = list(self._items)
        self._items.clear()
        return items

    def _take(self, chunk: bytes) -> None:
        self.received += chunk
        rest = self._greeting.take(chunk)
        if rest:
            self._items.extend(decoded(self._frames.feed(rest)))

    async def close(self) -> None:
        """Close our side (the bus may have closed it already)."""
        self._writer.close()
        with contextlib.suppress(ConnectionError):
            await self._writer.wait_closed()


# -- a tap between a library and the bus ------------------------------------------------------


class Tap:
    """A relay that forwards every byte between ZeroMQ peers and the bus unchanged, noting the commands.

    A library connects to ``endpoint``; each connection is relayed to ``target``. ``commands``
    holds what each side sent, as ("peer" or "bus", name, body), in order; ``connections``
    counts the connections accepted, so a reconnect (a heartbeat that timed out) shows.
    """

    def __init__(self, target: str) -> None:
        self.target = target
        self.endpoint = ""
        self.connections = 0
        self.commands: list[tuple[str, bytes, bytes]] = []
        self._server: asyncio.Server | None = None
        self._relays: set[asyncio.Task[Any]] = set()
        self._writers: set[asyncio.StreamWriter] = set()

    async def start(self, listen: str) -> str:
        """Listen on ``listen`` (tcp://127.0.0.1:* or ipc://PATH); return the endpoint to connect to."""
        if listen.startswith("ipc://"):
            self._server = await asyncio.start_unix_server(self._accept, listen.removeprefix("ipc://"))
            self.endpoint = listen
        else:
            self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
            self.endpoint = f"tcp://127.0.0.1:{self._server.sockets[0].getsockname()[1]}"
        return self.endpoint

    def sent(self, side: str, name: bytes) -> list[bytes]:
        """The bodies of the ``name`` commands that ``side`` ("peer" or "bus") sent."""
        return [body for who, what, body in self.commands if who == side and what == name]

    async def close(self) -> None:
        """Stop listening, close every relayed connection and wait for the relays to end."""
        if self._server is not None:
            self._server.close()
        for writer in self._writers:
            writer.close()  # each pump reads the end of its stream and stops
        if self._relays:
            await asyncio.wait(self._relays, timeout=WAIT)

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        task = asyncio.current_task()
        assert task is not None
        self._relays.add(task)
        self._writers.add(writer)
        try:
            bus_reader, bus_writer = await open_stream(self.target)
            self._writers.add(bus_writer)
            try:
                await asyncio.gather(self._pump(reader, bus_writer, "peer"), self._pump(bus_reader, writer, "bus"))
            finally:
                bus_writer.close()
        finally:
            writer.close()
            self._relays.discard(task)

    async def _pump(self, source: asyncio.StreamReader, sink: asyncio.StreamWriter, side: str) -> None:
        greeting = Greeting()
        frames: FrameReader | None = FrameReader(max_message=READ_LIMIT, max_frames=1 << 10)
        with contextlib.suppress(ConnectionError):
            while chunk := await source.read(65536):
                sink.write(chunk)
                await sink.drain()
                if frames is None:
                    continue
                try:
                    rest = greeting.take(chunk)
                    for item in frames.feed(rest or b""):
                        if isinstance(item, tuple):
                            self.commands.append((side, *item))
                except HandshakeError:
                    frames = None  # not ours to judge: keep relaying, stop noting
        if sink.can_write_eof():
            sink.write_eof()


# -- the bus from outside ---------------------------------------------------------------------


async def rejected(client: Client, reason: str) -> float:
    """How many inputs the bus refused for ``reason``, as its /metrics says."""
    text = await (await client.get("/metrics")).text()
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "devbus_rejected_total" and sample.labels.get("reason") == reason:
                return float(sample.value)
    return 0.0


def shorten_handshake(monkeypatch: pytest.MonkeyPatch, seconds: float) -> None:
    """Give ZeroMQ peers of an in-process bus ``seconds`` to greet and say READY (10 s in production)."""
    monkeypatch.setattr(zmtp_peer, "HANDSHAKE_TIMEOUT", seconds)
