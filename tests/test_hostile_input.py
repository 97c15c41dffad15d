"""Hostile bytes in headers, names and numbers: refused with a clear error, logged in one line, no token shown."""

from __future__ import annotations

import socket
from typing import Any

import msgspec
import pytest
from rawhttp import exchange
from support import WAIT, BusProcess, Client, address, connect_sender, wait_for_total

from devbus.bus.keys import ENDPOINTS, METRICS
from devbus.envelope import decode_wire_event
from devbus.errors import InvalidEvent
from devbus.frames import encode_frames

TOKEN = "k7Qm2xVb9RtL4wPz8NcY3hJd6FgS1aUe5iOo0pKlMnB"  # 43 characters, like a urlsafe 32-byte token


def raw_request(*header_lines: bytes) -> bytes:
    return (
        b"GET /api/dev/history HTTP/1.1\r\nHost: localhost\r\n" + b"".join(h + b"\r\n" for h in header_lines) + b"\r\n"
    )


@pytest.mark.parametrize(
    "header",
    [b"Last-Event-ID: 12\xff\xfe", b"Authorization: Bearer \xc3\x28abc", b"X-Anything: \x80"],
    ids=["last-event-id", "authorization", "any-header"],
)
async def test_a_header_that_is_not_utf8_is_a_400_json_error(make_bus: Any, header: bytes) -> None:
    """Regression: a non-UTF-8 Last-Event-ID or Authorization gave 500 and a traceback."""
    client: Client = await make_bus(token=TOKEN)
    port = client.server.port
    assert port is not None
    response = await exchange(port, raw_request(header))
    assert response.status == 400
    error = response.json()["error"]
    assert "not valid UTF-8" in error and header.split(b":")[0].decode() in error


def _send_raw(url: str, request: bytes) -> bytes:
    with socket.create_connection(address(url), timeout=WAIT) as conn:
        conn.sendall(request)
        received = b""
        while chunk := conn.recv(65536):
            received += chunk
        return received


@pytest.mark.parametrize("level", ["warning", "debug"])
def test_malformed_requests_log_one_line_and_no_piece_of_the_token(bus_process: Any, level: str) -> None:
    """Regression: aiohttp's error quoted 31 of the token's 43 characters, with a 10-line traceback."""
    bus: BusProcess = bus_process("--token", TOKEN, "--log-level", level, "--quiet")
    malformed = [
        raw_request(b"Authorization: Bearer " + TOKEN.encode() + b"x" * 9000),  # line too long
        raw_request(b"Authorization: Bearer " + TOKEN[:30].encode() + b"\x01"),  # invalid character
        b"GET /?token=" + TOKEN.encode() + b" HTTP/1.1 junk\r\nHost: localhost\r\n\r\n",  # bad request line
    ]
    for request in malformed:
        assert _send_raw(bus.url, request).startswith(b"HTTP/1.")
    assert bus.stop() == 0
    bus.wait_for_line("devbus stopping")
    output = "\n".join(bus.lines)
    pieces = {TOKEN[i : i + 6] for i in range(len(TOKEN) - 5)}
    assert not [piece for piece in pieces if piece in output], output
    warnings = [line for line in bus.lines if " WARNING devbus.http" in line]
    assert len(warnings) == len(malformed), output
    if level == "warning":
        assert "Traceback" not in output


@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")], ids=["nan", "inf", "-inf"])
def test_non_finite_numbers_are_refused_over_messagepack_as_over_http(value: float) -> None:
    """Regression: NaN and Infinity over ZeroMQ silently became null."""
    body = msgspec.msgpack.encode({"type": "t.n", "data": {"deep": [{"x": value}]}})
    with pytest.raises(InvalidEvent, match="NaN and Infinity"):
        decode_wire_event(body)


BIDI = {"rlo": "\u202e", "zero-width-space": "\u200b", "bom": "\ufeff", "isolate": "\u2066", "private-use": "\ue000"}


@pytest.mark.parametrize("char", list(BIDI.values()), ids=list(BIDI))
@pytest.mark.parametrize("field", ["event_type", "source"])
async def test_invisible_and_bidi_characters_are_refused_in_names(bus: Client, char: str, field: str) -> None:
    """Regression: U+202E in a type reordered the console line."""
    event = {"event_type": "agent.ok", "source": "ok", "data": {}}
    event[field] = f"agent{char}.evil"
    response = await bus.post("/api/dev/webhook", json=event)
    assert response.status == 422
    assert f"U+{ord(char):04X}" in (await response.json())["error"]
    assert (await (await bus.get("/api/dev/health")).json())["events"] == 0


async def test_bidi_characters_are_refused_over_zeromq(make_bus: Any, zmq_context: Any) -> None:
    client: Client = await make_bus(ingest="tcp://127.0.0.1:*")
    sender = await connect_sender(zmq_context, client.app[ENDPOINTS]["ingest"])
    head, body = encode_frames("agent.ok")
    evil = msgspec.msgpack.encode({"type": "agent\u202e.evil", "data": {}})
    await sender.send_multipart(["agent\u202e.evil".encode(), evil])
    await sender.send_multipart([head, body])
    await wait_for_total(client, 1)
    metrics = client.app[METRICS].render().decode()
    assert 'devbus_rejected_total{reason="zmq_type"} 1.0' in metrics
    events = (await (await client.get("/api/dev/history")).json())["events"]
    assert [e["type"] for e in events] == ["agent.ok"]
