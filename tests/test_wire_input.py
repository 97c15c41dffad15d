"""decode_wire_event: the checks on a ZeroMQ body that JSON never needed."""

from __future__ import annotations

from typing import Any

import msgspec
import pytest

from devbus.envelope import decode_wire_event
from devbus.errors import InvalidEvent, MalformedInput, Unauthorized

TOKEN = "w1re-t0ken"


def body(**fields: Any) -> bytes:
    return msgspec.msgpack.encode({"type": "t", "data": {}, **fields})


@pytest.mark.parametrize(
    "data",
    [{"x": msgspec.msgpack.Ext(1, b"x")}, {"x": {None: 1}}, {"x": {True: 1}}],
    ids=["extension-type", "null-key", "bool-key"],
)
def test_data_that_json_cannot_carry_is_refused(data: dict[str, Any]) -> None:
    """Regression: such data passed validation, then failed while the dispatcher encoded it."""
    with pytest.raises(InvalidEvent, match="only JSON values"):
        decode_wire_event(body(data=data))


def test_invalid_utf8_is_malformed_not_a_crash() -> None:
    """Regression: msgspec raised UnicodeDecodeError, which escaped and dropped the whole ingest batch."""
    with pytest.raises(MalformedInput, match="not valid MessagePack"):
        decode_wire_event(b"\x82\xa4type\xa2\xff\xfe\xa4data\x80")


def test_deep_nesting_is_refused_not_a_crash() -> None:
    with pytest.raises(InvalidEvent, match="`data` nests deeper than 64 levels"):
        decode_wire_event(b"\x82\xa4type\xa1t\xa4data\x81\xa1x" + b"\x91" * 100_000 + b"\xc0")


@pytest.mark.parametrize(
    "given", [None, "", "wrong", TOKEN + "x", TOKEN[:-1]], ids=["absent", "empty", "wrong", "longer", "prefix"]
)
def test_a_bus_with_a_token_refuses_messages_without_it(given: str | None) -> None:
    payload = body() if given is None else body(token=given)
    with pytest.raises(Unauthorized, match="`token` field"):
        decode_wire_event(payload, token=TOKEN)


def test_the_right_token_passes() -> None:
    draft = decode_wire_event(body(token=TOKEN, data={"n": 1}), token=TOKEN)
    assert (draft.type, draft.data) == ("t", {"n": 1})
    # Without a token setting, a token field is simply ignored.
    assert decode_wire_event(body(token="anything")).type == "t"
