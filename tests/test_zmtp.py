"""The ZMTP codec: greetings, frames and the whole-message bound, byte by byte."""

from __future__ import annotations

import struct

import pytest

from devbus.zmtp import GREETING, FrameReader, Greeting, HandshakeError, Rejected, command, message, ready


def frame(body: bytes, *, more: bool = False) -> bytes:
    flag = 0x01 if more else 0x00
    if len(body) > 255:
        return bytes([flag | 0x02]) + struct.pack(">Q", len(body)) + body
    return bytes([flag, len(body)]) + body


def parse(reader: FrameReader, wire: bytes, *, step: int) -> list[object]:
    out: list[object] = []
    for at in range(0, len(wire), step):
        for item in reader.feed(wire[at : at + step]):
            out.append(item.reason if isinstance(item, Rejected) else item)
    return out


WIRE = (
    message([b"t", b"body"])
    + frame(b"x" * 600, more=True)
    + frame(b"y" * 600)  # 1,200 bytes: over the limit together
    + message([b"a", b"b", b"c"])  # three frames
    + command(b"PING", b"\x00\x00ctx")
    + message([b"ok", b"x" * 300])  # a long frame that fits
)
EXPECTED = [[b"t", b"body"], "zmq_oversize", "zmq_frames", (b"PING", b"\x00\x00ctx"), [b"ok", b"x" * 300]]


@pytest.mark.parametrize("step", [1, 7, len(WIRE)], ids=["byte-by-byte", "small-reads", "one-read"])
def test_messages_commands_and_refusals_come_out_the_same_however_the_bytes_arrive(step: int) -> None:
    reader = FrameReader(max_message=1000, max_frames=2)
    assert parse(reader, WIRE, step=step) == EXPECTED
    assert reader.buffered == 0


def test_a_multipart_message_without_end_is_refused_once_and_never_buffered() -> None:
    """Regression: libzmq kept every frame of an unfinished message (1 MiB each, without bound)."""
    reader = FrameReader(max_message=10_000, max_frames=2)
    refused = []
    for _ in range(1000):
        refused += reader.feed(frame(b"z" * 4000, more=True))
        assert reader.buffered <= 10_000
    assert [item.reason for item in refused if isinstance(item, Rejected)] == ["zmq_oversize"]
    # Its last frame ends it; the next message is read normally.
    assert reader.feed(frame(b"end") + message([b"next", b"one"])) == [[b"next", b"one"]]


def test_an_oversize_frame_is_skipped_as_it_arrives() -> None:
    reader = FrameReader(max_message=100, max_frames=2)
    header = bytes([0x02]) + struct.pack(">Q", 10**9)  # announces a gigabyte
    assert [getattr(item, "reason", item) for item in reader.feed(header + b"x" * 1000)] == ["zmq_oversize"]
    assert reader.buffered == 0


def test_greeting_and_ready_round_trip() -> None:
    greeting = Greeting()
    assert greeting.take(GREETING[:10]) is None
    assert greeting.take(GREETING[10:] + b"rest") == b"rest"
    assert FrameReader(max_message=100, max_frames=1).feed(ready(b"PUB")) == [
        (b"READY", b"\x0bSocket-Type\x00\x00\x00\x03PUB")
    ]


@pytest.mark.parametrize(
    ("greeting", "error"),
    [
        (b"GET / HTTP/1.1\r\n".ljust(64, b"x"), "bad signature"),
        (GREETING[:10] + b"\x02" + GREETING[11:], "too old"),
        (GREETING[:12] + b"CURVE".ljust(20, b"\x00") + GREETING[32:], "NULL only"),
    ],
    ids=["not-zeromq", "zmtp-2", "curve"],
)
def test_peers_that_cannot_talk_to_the_bus_are_refused(greeting: bytes, error: str) -> None:
    with pytest.raises(HandshakeError, match=error):
        Greeting().take(greeting)
