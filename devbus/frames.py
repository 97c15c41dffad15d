"""ZeroMQ framing: ``[type, MessagePack body]`` in both directions, encoded and checked here."""

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

__all__ = ["WireReject", "decode_event_frames", "decode_frames", "encode_event_frames", "encode_frames"]


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
    head, body = frames
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
