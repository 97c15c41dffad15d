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


@pytest.mark.parametrize(
    ("sent", "error"),
    [
        (b"\xff" + bytes(8) + b"\x7f\x01\x01\x00\x00", "ZMTP 2.0 \\(libzmq 3.x\\) is too old"),
        (b"GET / HTTP/1.1\r\n", "bad signature"),
        (b"\x05hello", "bad signature"),  # ZMTP 1.0 (libzmq 2.x): an identity, no signature
    ],
    ids=["zmtp-2", "http", "zmtp-1"],
)
def test_a_greeting_is_refused_by_its_first_wrong_byte(sent: bytes, error: str) -> None:
    """Regression: the greeting was judged only once 64 bytes had come, and these peers send
    fewer and wait, so they were closed at the handshake deadline as if they were slow."""
    greeting = Greeting()
    with pytest.raises(HandshakeError, match=error):
        for byte in sent:
            greeting.take(bytes([byte]))


def test_a_command_inside_a_message_shares_its_bound() -> None:
    """Regression: a command between two frames of a message was held beside the message's frames,
    so a peer could make the reader hold twice --max-message (900 bytes of frames and a 999-byte
    command here). libzmq does send PING between frames, so the command is still honoured: the
    message it does not fit in is refused alone, and the next one is read."""
    reader = FrameReader(max_message=1000, max_frames=2)
    inside = command(b"PING", b"\x00\x00" + b"c" * 16)  # 23 bytes: it fits beside 970
    wire = frame(b"a" * 970, more=True) + inside + frame(b"b" * 20) + frame(b"x" * 900, more=True)
    wire += command(b"X", b"y" * 997) + frame(b"z") + message([b"next", b"one"])
    got: list[object] = []
    for at in range(0, len(wire), 10):
        got += [getattr(item, "reason", item) for item in reader.feed(wire[at : at + 10])]
        assert reader.buffered <= 1000 + 9 + 10
    assert got == [
        (b"PING", b"\x00\x00" + b"c" * 16),
        [b"a" * 970, b"b" * 20],
        "zmq_oversize",
        (b"X", b"y" * 997),
        [b"next", b"one"],
    ]
    assert reader.buffered == 0


@pytest.mark.parametrize("step", [1, 5, 10_000], ids=["byte-by-byte", "small-reads", "one-read"])
def test_short_frames_after_a_long_one_count_towards_the_same_bound(step: int) -> None:
    """Short frames (at most 255 bytes) are read on a shorter path than long ones; beside a long
    frame they still share its message's bound, in frames and in bytes."""
    reader = FrameReader(max_message=1000, max_frames=3)
    wire = (
        message([b"x" * 700, b"y" * 200, b"z" * 100])  # 1,000 bytes: fits
        + message([b"x" * 900, b"y" * 101])  # 1,001 bytes: refused at its short frame
        + message([b"a", b"b", b"c", b"d"])  # four short frames: refused at the fourth
        + message([b"next", b"one", b"\x00" * 8])
    )
    assert parse(reader, wire, step=step) == [
        [b"x" * 700, b"y" * 200, b"z" * 100],
        "zmq_oversize",
        "zmq_frames",
        [b"next", b"one", b"\x00" * 8],
    ]
    assert reader.buffered == 0
