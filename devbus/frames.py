"""ZeroMQ framing: ``[type, MessagePack body]`` in both directions, encoded and checked here.

An acknowledged sender (a DEALER, see the README's wire format) adds a third frame
to each event, its seq as 8 bytes big-endian, and speaks two more messages with the
bus: ``[devbus.hello, {"producer", "next"}]`` first on each connection, and the bus's
``[devbus.ack, {"seq", "resend"?, "rejected"?}]`` back. Keeping the seq out of the
body lets the bus read it from a message whose body it refuses.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import msgspec

from devbus.envelope import (
    MAX_SOURCE_LENGTH,
    Draft,
    Event,
    WireEventIn,
    check_name,
    decode_wire_event,
    encode_msgpack,
)
from devbus.errors import InvalidEvent, MalformedInput, Unauthorized
from devbus.nesting import TOO_DEEP

__all__ = [
    "ACK",
    "HELLO",
    "SEQ_SIZE",
    "Ack",
    "Hello",
    "WireReject",
    "decode_ack",
    "decode_event",
    "decode_event_frames",
    "decode_frames",
    "decode_hello",
    "encode_ack",
    "encode_event_frames",
    "encode_frames",
    "encode_hello",
    "seq_frame",
]

HELLO = b"devbus.hello"
ACK = b"devbus.ack"
SEQ_SIZE = 8
MAX_PRODUCER = 64  # characters of a producer id


class Hello(msgspec.Struct, frozen=True):
    """An acknowledged sender's first message on a connection: who it is, and the first seq it still holds."""

    producer: str
    next: int = 1


class Ack(msgspec.Struct, frozen=True, omit_defaults=True):
    """The bus's answer to an acknowledged sender.

    ``seq``: every event up to it is settled (stored, or refused for good and listed
    in ``rejected`` as [seq, reason, text] the first time). ``resend``: the bus took
    nothing after ``seq`` on this connection: send everything after it again.
    """

    seq: int
    resend: bool = False
    rejected: list[tuple[int, str, str]] = []


class WireReject(InvalidEvent):
    """An ingest message refused; ``reason`` is the metrics label (``zmq_<kind>``)."""


_event_decoder = msgspec.msgpack.Decoder(Event)


def encode_frames(
    type_: str, data: dict[str, Any] | None = None, *, source: str | None = None, token: str | None = None
) -> list[bytes]:
    """Build the two ingest frames for one event, validating it first."""
    check_name(type_, field="type")
    if source is not None:
        check_name(source, field="source", max_length=MAX_SOURCE_LENGTH)
    if data is not None and not isinstance(data, dict):
        raise InvalidEvent(f"`data` must be a dict (a JSON object), got {type(data).__name__}")
    try:
        body = encode_msgpack(WireEventIn(type_, data if data is not None else {}, source, token))
    except (TypeError, msgspec.EncodeError) as exc:
        raise InvalidEvent(f"`data` cannot be encoded as MessagePack: {exc}") from exc
    return [type_.encode(), body]


def decode_frames(frames: Sequence[bytes], *, max_size: int, token: str | None = None) -> Draft:
    """Validate one ingest message; raise WireReject saying which rule it broke."""
    if len(frames) != 2:
        raise WireReject(f"expected 2 frames [type, MessagePack body], got {len(frames)}", reason="zmq_frames")
    return decode_event(frames[0], frames[1], max_size=max_size, token=token)


def decode_event(head: bytes, body: bytes, *, max_size: int, token: str | None = None) -> Draft:
    """Validate an ingest message's type frame and body; raise WireReject saying which rule they broke."""
    if len(head) + len(body) > max_size:
        raise WireReject(
            f"message of {len(head) + len(body)} bytes is over the limit of {max_size} (--max-message)",
            reason="zmq_oversize",
        )
    try:
        draft = decode_wire_event(body, token=token)
    except Unauthorized as exc:
        raise WireReject(str(exc), reason="zmq_token") from exc
    except MalformedInput as exc:
        raise WireReject(str(exc), reason="zmq_msgpack") from exc
    except InvalidEvent as exc:
        if exc.reason == TOO_DEEP:
            raise WireReject(str(exc), reason="zmq_depth") from exc
        # msgspec's ValidationError (and an encoder's TypeError for data JSON
        # cannot carry) mean the map has the wrong shape; anything else is a
        # name that breaks the type or source rules.
        shape = isinstance(exc.__cause__, msgspec.ValidationError | TypeError | ValueError)
        raise WireReject(str(exc), reason="zmq_shape" if shape else "zmq_type") from exc
    if head != draft.type.encode():
        raise WireReject(
            f"type frame {head[:60]!r} does not match the body's type {draft.type[:60]!r}", reason="zmq_type"
        )
    return draft


def encode_event_frames(event: Event) -> list[bytes]:
    """Build the two egress frames for one published event."""
    return [event.type.encode(), encode_msgpack(event)]


def decode_event_frames(frames: Sequence[bytes]) -> Event:
    """Decode one egress message into an Event."""
    if len(frames) != 2:
        raise MalformedInput(f"expected 2 frames [type, MessagePack envelope], got {len(frames)}")
    try:
        return _event_decoder.decode(frames[1])
    except msgspec.DecodeError as exc:
        raise MalformedInput(f"egress message is not a devbus envelope: {exc}") from exc


_hello_decoder = msgspec.msgpack.Decoder(Hello)
_ack_decoder = msgspec.msgpack.Decoder(Ack)


def encode_hello(producer: str, next_seq: int) -> list[bytes]:
    """The hello an acknowledged sender opens each connection with."""
    return [HELLO, encode_msgpack(Hello(producer, next_seq))]


def decode_hello(body: bytes) -> Hello:
    """Read a hello's body; WireReject (``zmq_shape``) saying what is wrong."""
    try:
        hello = _hello_decoder.decode(body)
    except (msgspec.DecodeError, UnicodeDecodeError) as exc:
        raise WireReject(f'a hello is {{"producer": str, "next": int}}: {exc}', reason="zmq_shape") from exc
    producer = hello.producer
    if not (1 <= len(producer) <= MAX_PRODUCER and producer.isascii() and producer.isprintable()) or " " in producer:
        raise WireReject(
            f"a hello's `producer` must be 1-{MAX_PRODUCER} visible ASCII characters (got {producer[:80]!r})",
            reason="zmq_shape",
        )
    if hello.next < 1:
        raise WireReject(f"a hello's `next` must be a seq, 1 or more (got {hello.next})", reason="zmq_shape")
    return hello


def encode_ack(ack: Ack) -> list[bytes]:
    """The frames of one ack."""
    return [ACK, encode_msgpack(ack)]


def decode_ack(body: bytes) -> Ack:
    """Read an ack's body (MalformedInput if it is not one)."""
    try:
        return _ack_decoder.decode(body)
    except (msgspec.DecodeError, UnicodeDecodeError) as exc:
        raise MalformedInput(f"not a devbus ack: {exc}") from exc


def seq_frame(seq: int) -> bytes:
    """An event's seq as its third frame."""
    return seq.to_bytes(SEQ_SIZE, "big")
