"""Nesting past MAX_DEPTH: measured exactly on the bytes, refused over HTTP (422) and ZeroMQ (counted)."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Callable
from typing import Any

import msgspec
import pytest
import zmq
from blackbox import metric, sse_stream
from hypothesis import example, given
from hypothesis import strategies as st
from support import WAIT, BusProcess, fetch_history, wait_until

from devbus.envelope import MAX_DEPTH
from devbus.frames import WireReject, decode_frames, encode_frames
from devbus.nesting import deep_path, json_deep_path, json_nests_deeper

Start = Callable[..., BusProcess]
MIB = 1024 * 1024

# Strings full of what the byte-level measure must see through: brackets, quotes, backslashes.
tricky = st.text(alphabet='[]{}"\\ab,:/\u00e9', max_size=8)
documents = st.recursive(
    st.none() | st.booleans() | st.integers() | tricky,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(tricky, inner, max_size=3),
    max_leaves=40,
)


def depth_of(value: object) -> int:
    if isinstance(value, dict):
        return 1 + max(map(depth_of, value.values()), default=0)
    if isinstance(value, list):
        return 1 + max(map(depth_of, value), default=0)
    return 0


def follow(document: Any, path: list[Any]) -> Any:
    for part in path:
        document = document[part]
    return document


@given(documents, st.integers(0, 8), st.booleans())
@example("[", 0, True)  # brackets only in a string, and a limit of no levels at all
@example([["]", "["], '\\"[{'], 1, False)  # brackets and escapes in strings inside a shallow array
def test_the_byte_measure_of_json_is_exact(document: object, limit: int, ascii_only: bool) -> None:
    body = json.dumps(document, ensure_ascii=ascii_only).encode()
    too_deep = depth_of(document) > limit
    assert json_nests_deeper(body, limit) == too_deep
    for path in (deep_path(document, limit) or [], json_deep_path(body, limit)):
        # Each path leads to a container one level past the limit (when there is one).
        assert len(path) == (limit if too_deep else 0)
        if too_deep:
            assert isinstance(follow(document, path), dict | list)


def test_paths_name_the_keys_and_indexes_down_to_the_deep_point() -> None:
    document = {"a": 1, "b": [0, {"c": [[[1]]]}], "d": {}}
    assert deep_path(document, 4) == ["b", 1, "c", 0]
    assert json_deep_path(json.dumps(document).encode(), 4) == ["b", 1, "c", 0]
    assert json_deep_path(b'{"x\\"y": [[', 2) == ['x"y', 0]  # reads what it can of a body cut short
    assert deep_path(document, 6) is None and json_deep_path(json.dumps(document).encode(), 6) == []


# ---------------------------------------------------------------- a real bus


def nested(levels: int) -> str:
    """JSON for a `data` object nesting ``levels`` deep (itself level 1): {"tree": [[…]]}."""
    return '{"tree": ' + "[" * (levels - 1) + "]" * (levels - 1) + "}"


def post(bus: BusProcess, path: str, body: bytes) -> tuple[int, dict[str, Any]]:
    call = urllib.request.Request(
        f"{bus.url}/api/dev/{path}", data=body, headers={"Content-Type": "application/json"}, method="POST"
    )
    try:
        with urllib.request.urlopen(call, timeout=WAIT) as response:
            return response.status, json.load(response)
    except urllib.error.HTTPError as error:
        with error:
            return error.code, json.load(error)


@pytest.mark.parametrize("levels", [900, 100_000], ids=["900-deep", "100000-deep"])
def test_http_refuses_data_nesting_past_the_limit_and_goes_on_serving(bus_process: Start, levels: int) -> None:
    """Regression: a 900-deep event was stored, and the catalogue logged a 242 KB traceback for each."""
    bus = bus_process()
    deep = nested(levels)
    with sse_stream(bus) as stream:
        for path in ("webhook", "trigger"):
            for _ in range(20):  # one log line in all, not one per event
                status, answer = post(bus, path, ('{"event_type": "deep.one", "data": ' + deep + "}").encode())
                assert status == 422, answer
            assert answer["error"].startswith(f"`data` nests deeper than {MAX_DEPTH} levels of objects and arrays")
            assert "(at $.data.tree[0][0][0][0][0][0]…)" in answer["error"]
        good = '{"event_type": "fine", "data": ' + nested(MAX_DEPTH) + "}"
        batch = '{"events": [' + good + ", " + good + ', {"event_type": "deep.one", "data": ' + deep + "}]}"
        status, answer = post(bus, "batch", batch.encode())
        assert status == 422
        assert answer["error"].startswith(f"events[2]: `data` nests deeper than {MAX_DEPTH} levels")

        # Nothing was stored or delivered; the limit itself is accepted, and everyone is still served.
        status, answer = post(bus, "webhook", good.encode())
        assert status == 200, answer
        delivered = stream.event()
        assert (delivered["type"], delivered["id"]) == ("fine", answer["id"])
        assert depth_of(delivered["data"]) == MAX_DEPTH
    assert [event["type"] for event in fetch_history(bus)] == ["fine"]
    assert metric(bus, "devbus_rejected_total") == 41
    with urllib.request.urlopen(f"{bus.url}/metrics", timeout=WAIT) as response:
        assert 'devbus_rejected_total{reason="too_deep"} 41.0' in response.read().decode()
    status, _ = post(bus, "webhook", b'{"event_type": "after", "data": {}}')
    assert status == 200
    assert not [line for line in bus.lines if "Traceback" in line or "RecursionError" in line]


def deep_msgpack(levels: int) -> bytes:
    """A MessagePack ingest body whose `data` nests ``levels`` deep, written by hand (encoders recurse)."""
    head = msgspec.msgpack.encode({"type": "deep.one"})
    return b"\x82" + head[1:] + b"\xa4data" + b"\x81\xa4tree" + b"\x91" * (levels - 2) + b"\x90"


def test_the_hand_written_bodies_nest_as_deep_as_they_say() -> None:
    assert json.loads(nested(4)) == {"tree": [[[]]]}
    assert msgspec.msgpack.decode(deep_msgpack(4)) == {"type": "deep.one", "data": {"tree": [[[]]]}}


def test_zeromq_data_at_the_limit_is_taken_and_one_level_more_is_refused() -> None:
    assert depth_of(decode_frames([b"deep.one", deep_msgpack(MAX_DEPTH)], max_size=MIB).data) == MAX_DEPTH
    with pytest.raises(WireReject, match=r"nests deeper than 64 levels .*\(at \$\.data\.tree\[0\]") as refused:
        decode_frames([b"deep.one", deep_msgpack(MAX_DEPTH + 1)], max_size=MIB)
    assert refused.value.reason == "zmq_depth"


@pytest.mark.parametrize("levels", [900, 100_000], ids=["900-deep", "100000-deep"])
def test_zeromq_ingest_counts_data_nesting_past_the_limit_and_delivers_the_next(
    bus_process: Start, levels: int
) -> None:
    bus = bus_process("--quiet")
    context = zmq.Context()
    sender = context.socket(zmq.XPUB)
    try:
        sender.setsockopt(zmq.XPUB_NODROP, 1)
        sender.connect(bus.endpoints["ingest"])
        assert sender.poll(int(WAIT * 1000)), "the bus never subscribed"
        sender.recv()
        for _ in range(20):
            sender.send_multipart([b"deep.one", deep_msgpack(levels)])
        sender.send_multipart(encode_frames("after.deep", {"tree": [[[]]]}))
        wait_until(lambda: bool(fetch_history(bus)), what="the event after the deep ones arriving")
        assert [event["type"] for event in fetch_history(bus)] == ["after.deep"]
        wait_until(lambda: metric(bus, "devbus_rejected_total") == 20, what="the deep messages being counted")
        with urllib.request.urlopen(f"{bus.url}/metrics", timeout=WAIT) as response:
            assert 'devbus_rejected_total{reason="zmq_depth"} 20.0' in response.read().decode()
    finally:
        sender.close(linger=0)
        context.term()
