"""The ZMTP peer under the ingest and the egress: refusals are told with ERROR, counted, and a peer's ERROR closes."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from aiohttp.test_utils import TestClient
from support import WAIT, BusFactory

from devbus.bus.keys import ENDPOINTS
from devbus.zmtp import GREETING, FrameReader, command, ready

ANY_PORT = "tcp://127.0.0.1:*"
# (endpoint, its socket type, which it refuses from a peer, and one it takes)
SIDES = [("ingest", b"SUB", b"PUB"), ("egress", b"PUB", b"SUB")]
sides = pytest.mark.parametrize(("side", "ours", "taken"), SIDES, ids=[side for side, _, _ in SIDES])


@pytest.fixture
async def client(make_bus: BusFactory) -> TestClient[Any, Any]:
    """A bus with both ZeroMQ ends on free ports."""
    return await make_bus(ingest=ANY_PORT, egress=ANY_PORT)


async def exchange(client: TestClient[Any, Any], side: str, wire: bytes) -> list[tuple[bytes, bytes]]:
    """Send ``wire`` to the bus's ``side``, read until the bus closes, and return the commands it sent."""
    host, _, port = client.app[ENDPOINTS][side].removeprefix("tcp://").rpartition(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    try:
        writer.write(wire)
        async with asyncio.timeout(WAIT):
            received = await reader.read()  # until the bus closes the connection
    finally:
        writer.close()
    assert received.startswith(GREETING)
    items = FrameReader(max_message=1 << 16, max_frames=2).feed(received[len(GREETING) :])
    return [item for item in items if isinstance(item, tuple)]


async def rejected(client: TestClient[Any, Any], reason: str) -> str:
    metrics = await (await client.get("/metrics")).text()
    return next((line.split()[-1] for line in metrics.splitlines() if f'reason="{reason}"' in line), "0")


@sides
async def test_a_peer_refused_at_ready_is_told_why_and_counted(
    client: TestClient[Any, Any], side: str, ours: bytes, taken: bytes
) -> None:
    said = await exchange(client, side, GREETING + ready(ours))  # a SUB to the ingest, a PUB to the egress
    assert said[0] == (b"READY", b"\x0bSocket-Type" + len(ours).to_bytes(4, "big") + ours)
    name, body = said[-1]
    assert name == b"ERROR"
    reason = body[1:].decode()
    assert body[0] == len(reason) and f"a {ours.decode()} socket cannot connect to the {side}" in reason
    assert await rejected(client, "zmq_handshake") == "1.0"


@sides
async def test_a_peer_with_another_mechanism_is_told_and_one_that_is_not_zeromq_is_not(
    client: TestClient[Any, Any], side: str, ours: bytes, taken: bytes
) -> None:
    plain = GREETING[:12] + b"PLAIN".ljust(20, b"\x00") + GREETING[32:]
    name, body = (await exchange(client, side, plain))[-1]
    assert name == b"ERROR" and b"PLAIN" in body
    said = await exchange(client, side, b"GET / HTTP/1.1\r\n".ljust(64, b"x"))
    assert all(name != b"ERROR" for name, _ in said)
    assert await rejected(client, "zmq_handshake") == "2.0"


@sides
async def test_a_peer_that_sends_error_is_closed_at_once_and_counted(
    client: TestClient[Any, Any], side: str, ours: bytes, taken: bytes
) -> None:
    said = await exchange(client, side, GREETING + ready(taken) + command(b"ERROR", b"\x0dshutting down"))
    assert all(name != b"ERROR" for name, _ in said)  # closed (read to the end within WAIT), not answered
    assert await rejected(client, "zmq_error") == "1.0"
