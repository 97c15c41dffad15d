"""Property tests of the ZMTP codec: random bytes, random read splits, every command, the bounds.

Everything goes through ``devbus.zmtp``'s public names. The wire is built here by hand
(``raw_frame``) as well as with the codec's own ``message``/``command``, so that an
encoder bug cannot hide a decoder bug of the same shape.
"""

from __future__ import annotations

import struct

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from zmtp_peers import cut, decoded, frames_from, raw_frame, ready_body

from devbus.zmtp import (
    GREETING,
    GREETING_SIZE,
    FrameReader,
    Greeting,
    HandshakeError,
    check_greeting,
    check_ready,
    command,
    message,
    parse_ready,
    pong,
    ready,
)

# The fuzz run of random framing: 10,000 cases take 9-13 s on this 2-core machine when it is
# quiet, almost all of it hypothesis drawing the cases; 95 s and more when it is very busy.
FUZZ_EXAMPLES = 10_000
EXAMPLES = 300
HEADER = 9  # the longest frame header: flags and an 8-byte size
FAST = settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow])

Command = tuple[bytes, bytes]
Message = list[bytes | Command]  # frames, with commands between them as libzmq may send a PING there
Item = list[bytes] | Command | str

# -- strategies ------------------------------------------------------------------------------

# Frame bodies: mostly short (1-byte size), some long (8-byte size), a few empty.
bodies = st.one_of(st.binary(max_size=40), st.binary(min_size=250, max_size=700), st.just(b""))
splits = st.binary(max_size=8)  # read sizes, see zmtp_peers.cut

pings = st.builds(
    lambda ttl, context: (b"PING", struct.pack(">H", ttl) + context),
    st.integers(0, 0xFFFF),
    st.binary(max_size=16),
)
property_names = st.binary(min_size=1, max_size=40).map(bytes.lower)
readies = st.dictionaries(property_names, st.binary(max_size=300), max_size=5).map(
    lambda props: (b"READY", ready_body(props))
)
errors = st.binary(max_size=255).map(lambda reason: (b"ERROR", bytes([len(reason)]) + reason))
subscriptions = st.tuples(st.sampled_from([b"SUBSCRIBE", b"CANCEL"]), st.binary(max_size=300))
pongs = st.binary(max_size=16).map(lambda context: (b"PONG", context))
others = st.tuples(st.binary(min_size=1, max_size=30), st.binary(max_size=300))  # any name, even unknown
commands = st.one_of(pings, pongs, readies, errors, subscriptions, others)


def interleave(frames: list[bytes], inside: list[tuple[int, Command]]) -> Message:
    """``frames`` with each command put between two of them (at a slot taken modulo the gaps)."""
    gaps = len(frames) - 1
    parts: Message = []
    for at, frame in enumerate(frames):
        parts.append(frame)
        if at < gaps:
            parts += [item for slot, item in inside if slot % gaps == at]
    return parts


messages = st.lists(bodies, min_size=1, max_size=4)
interleaved = st.builds(interleave, messages, st.lists(st.tuples(st.integers(0, 3), commands), max_size=2))
streams = st.lists(st.one_of(interleaved, commands), max_size=12)


def size(item: Command) -> int:
    """The size a command's frame announces: its name's length byte, its name and its body."""
    return 1 + len(item[0]) + len(item[1])


def encode(items: list[Message | Command], *, long: st.DataObject | None = None) -> bytes:
    """The wire for ``items``: with the codec's encoders, or by hand with random size encodings."""
    wire = b""
    for item in items:
        if isinstance(item, tuple):
            if long is None:
                wire += command(*item)
            else:
                wire += raw_frame(bytes([len(item[0])]) + b"".join(item), command=True, long=long.draw(st.booleans()))
        elif long is None and all(isinstance(part, bytes) for part in item):
            wire += message([part for part in item if isinstance(part, bytes)])
        else:
            last = max(at for at, part in enumerate(item) if isinstance(part, bytes))
            for at, part in enumerate(item):
                wide = long is not None and long.draw(st.booleans())
                if isinstance(part, tuple):
                    wire += raw_frame(bytes([len(part[0])]) + b"".join(part), command=True, long=wide)
                else:
                    wire += raw_frame(part, more=at < last, long=wide)
    return wire


def expected(items: list[Message | Command], *, max_message: int, max_frames: int) -> list[Item]:
    """What the reader must give for ``items``: commands as they come, messages or why they break a rule.

    The rules are checked frame by frame, in this order; a command inside a message shares
    the message's byte budget (it is held beside the message's frames), and one that does
    not fit refuses that message alone.
    """
    out: list[Item] = []
    for item in items:
        if isinstance(item, tuple):
            out.append(item)
            continue
        held: list[bytes] = []
        refused = False
        for part in item:
            if isinstance(part, tuple):
                if not refused and held and sum(map(len, held)) + size(part) > max_message:
                    out.append("zmq_oversize")
                    refused = True
                out.append(part)
            elif not refused and sum(map(len, held)) + len(part) > max_message:
                out.append("zmq_oversize")
                refused = True
            elif not refused and len(held) >= max_frames:
                out.append("zmq_frames")
                refused = True
            elif not refused:
                held.append(part)
        if not refused:
            out.append(held)
    return out


def fitting(items: list[Message | Command], max_message: int) -> list[Message | Command]:
    """``items`` without the commands over ``max_message`` (those refuse the connection, tested apart)."""
    kept: list[Message | Command] = []
    for item in items:
        if isinstance(item, tuple):
            if size(item) <= max_message:
                kept.append(item)
        else:
            kept.append([part for part in item if isinstance(part, bytes) or size(part) <= max_message])
    return kept


# -- random bytes -----------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.timeout(600)  # CPU-bound: on a busy machine it takes longer than the suite's 120 s per test
@settings(max_examples=FUZZ_EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    wire=st.one_of(st.binary(max_size=600), st.binary(max_size=40).map(frames_from)),
    cuts=splits,
    max_message=st.integers(0, 1024),
    max_frames=st.integers(1, 4),
)
def test_random_framing_cut_anywhere_decodes_as_fed_whole_within_the_bound(
    wire: bytes, cuts: bytes, max_message: int, max_frames: int
) -> None:
    """10,000 random wires: only HandshakeError escapes, the bound holds after every read, splits change nothing."""
    whole = FrameReader(max_message=max_message, max_frames=max_frames)
    try:
        whole_items: list[Item] | None = decoded(whole.feed(wire))
    except HandshakeError:
        whole_items = None
    pieces = FrameReader(max_message=max_message, max_frames=max_frames)
    piece_items: list[Item] = []
    try:
        for piece in cut(wire, cuts):
            piece_items += decoded(pieces.feed(piece))
            assert pieces.buffered <= max_message + HEADER + len(piece)
    except HandshakeError:
        assert whole_items is None, "refused when cut, accepted whole"
    else:
        assert piece_items == whole_items


@FAST
@given(
    wire=st.one_of(st.binary(max_size=100), st.binary(max_size=60).map(lambda tail: GREETING[:12] + tail)),
    cuts=splits,
)
def test_random_greetings_are_judged_the_same_however_they_arrive(wire: bytes, cuts: bytes) -> None:
    """Only HandshakeError escapes, whole or in pieces alike; what follows the 64 bytes comes out once."""
    try:
        Greeting().take(wire)
    except HandshakeError:
        refused_whole = True
    else:
        refused_whole = False
    greeting = Greeting()
    try:
        rests = [greeting.take(piece) for piece in cut(wire, cuts)]
    except HandshakeError:
        assert refused_whole
        return
    assert not refused_whole
    assert len(wire) < GREETING_SIZE or b"".join(rest for rest in rests if rest) == wire[GREETING_SIZE:]


@FAST
@given(body=st.binary(max_size=300))
def test_random_ready_bodies_parse_or_are_refused_with_handshake_error_only(body: bytes) -> None:
    try:
        parse_ready(body)
        check_ready(body, allowed=frozenset({b"PUB"}), role="ingest")
    except HandshakeError:
        pass


# -- valid streams --------------------------------------------------------------------------


@FAST
@given(items=streams, cuts=splits, data=st.data())
def test_valid_messages_and_commands_cut_anywhere_decode_exactly(
    items: list[Message | Command], cuts: bytes, data: st.DataObject
) -> None:
    """Encoded by the codec or by hand (short and long sizes mixed), read in random pieces: the same items."""
    for wire in (encode(items), encode(items, long=data)):
        reader = FrameReader(max_message=8000, max_frames=4)
        got: list[Item] = []
        for piece in cut(wire, cuts):
            got += decoded(reader.feed(piece))
        assert got == expected(items, max_message=8000, max_frames=4)
        assert not any(isinstance(item, str) for item in got)
        assert reader.buffered == 0
        assert not reader.in_progress


@FAST
@given(items=streams, cuts=splits, max_message=st.integers(0, 1500), max_frames=st.integers(1, 3))
@example(  # a command inside a message that it does not fit beside (see test_zmtp.py)
    items=[[b"a" * 970, (b"PING", bytes(2) + b"c" * 16), b"b" * 20], [b"x" * 900, (b"X", b"y" * 997), b"z"]],
    cuts=b"\x09",
    max_message=1000,
    max_frames=2,
)
def test_messages_over_a_limit_are_refused_alone_and_the_rest_still_decode(
    items: list[Message | Command], cuts: bytes, max_message: int, max_frames: int
) -> None:
    items = fitting(items, max_message)
    reader = FrameReader(max_message=max_message, max_frames=max_frames)
    got: list[Item] = []
    for piece in cut(encode(items), cuts):
        got += decoded(reader.feed(piece))
        assert reader.buffered <= max_message + HEADER + len(piece)
    assert got == expected(items, max_message=max_message, max_frames=max_frames)
    assert not reader.in_progress


@FAST
@given(size=st.integers(2**16, 2**64 - 1), before=messages, cuts=splits)
def test_a_frame_announcing_any_size_is_skipped_without_holding_it(size: int, before: list[bytes], cuts: bytes) -> None:
    """Only the announced size is read: a peer cannot make the reader hold or wait for gigabytes."""
    reader = FrameReader(max_message=4 * 700, max_frames=4)
    got: list[Item] = []
    for piece in cut(message(before) + raw_frame(b"", size=size, long=True) + b"x" * 100, cuts):
        got += decoded(reader.feed(piece))
        assert reader.buffered <= 4 * 700 + HEADER + len(piece)
    assert got == [before, "zmq_oversize"]
    assert reader.in_progress  # still throwing the announced bytes away


# -- commands -------------------------------------------------------------------------------


@FAST
@given(ttl=st.integers(0, 0xFFFF), context=st.binary(max_size=16))
def test_a_ping_is_answered_by_a_pong_with_its_context(ttl: int, context: bytes) -> None:
    ping = command(b"PING", struct.pack(">H", ttl) + context)
    [(name, body)] = FrameReader(max_message=100, max_frames=1).feed(ping)  # type: ignore[misc]
    assert (name, body[:2], body[2:]) == (b"PING", struct.pack(">H", ttl), context)
    answer = pong(body)
    assert answer == bytes([0x04, 5 + len(context), 4]) + b"PONG" + context
    assert FrameReader(max_message=100, max_frames=1).feed(answer) == [(b"PONG", context)]


@FAST
@given(properties=st.dictionaries(property_names, st.binary(max_size=300), max_size=6))
def test_ready_properties_round_trip_with_names_case_folded(properties: dict[bytes, bytes]) -> None:
    shouted = {name.upper(): value for name, value in properties.items()}
    assert parse_ready(ready_body(shouted)) == properties


@pytest.mark.parametrize(
    ("name", "body", "wire"),
    [
        (b"PING", b"\x00\x64ctx", b"\x04\x0a\x04PING\x00\x64ctx"),
        (b"PONG", b"ctx", b"\x04\x08\x04PONGctx"),
        (b"ERROR", b"\x03bad", b"\x04\x0a\x05ERROR\x03bad"),
        (b"SUBSCRIBE", b"agent.", b"\x04\x10\x09SUBSCRIBEagent."),
        (b"CANCEL", b"", b"\x04\x07\x06CANCEL"),
        (b"SUBSCRIBE", b"t" * 300, b"\x06" + struct.pack(">Q", 310) + b"\x09SUBSCRIBE" + b"t" * 300),
    ],
    ids=["ping", "pong", "error", "subscribe", "cancel-all", "long-subscribe"],
)
def test_commands_are_framed_exactly_as_zmtp_says(name: bytes, body: bytes, wire: bytes) -> None:
    assert command(name, body) == wire
    assert FrameReader(max_message=400, max_frames=1).feed(wire) == [(name, body)]


def test_ready_announces_the_socket_type_exactly() -> None:
    assert ready(b"SUB") == b"\x04\x19\x05READY\x0bSocket-Type\x00\x00\x00\x03SUB"
    check_ready(ready(b"SUB")[8:], allowed=frozenset({b"SUB", b"XSUB"}), role="egress")
    with pytest.raises(HandshakeError, match="a PUB socket cannot connect to the egress \\(SUB or XSUB only\\)"):
        check_ready(ready(b"PUB")[8:], allowed=frozenset({b"SUB", b"XSUB"}), role="egress")


@pytest.mark.parametrize(
    ("size", "long"),
    [(101, False), (255, False), (101, True), (2**64 - 1, True)],
    ids=["short", "short-max", "long", "long-max"],
)
def test_an_oversize_command_is_refused_from_its_header(size: int, long: bool) -> None:
    """No command body is read or held past the limit: the header alone refuses the connection."""
    with pytest.raises(HandshakeError, match=f"command of {size} bytes is over the limit"):
        FrameReader(max_message=100, max_frames=1).feed(raw_frame(b"", size=size, command=True, long=long))


def test_the_bus_greeting_is_zmtp_3_null_as_client() -> None:
    assert b"\xff" + bytes(8) + b"\x7f\x03\x00NULL" + bytes(16) + b"\x00" + bytes(31) == GREETING
    check_greeting(GREETING)
