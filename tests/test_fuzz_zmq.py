"""Property-based fuzz of the ZeroMQ ingest against a real `devbus run`."""

from __future__ import annotations

import json
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import msgspec
import pytest
import zmq
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from support import WAIT, BusProcess
from test_fuzz_http import check_event

MAX_MESSAGE = 4096
TOKEN = "zmq-t0ken-5d1e"

names = st.one_of(
    st.sampled_from(["agent.created", "a", "x" * 201, "", "a\nb", "a\r", "\x00", "é"]), st.text(max_size=20)
)
json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**64 - 1)
    | st.floats()
    | st.text(max_size=10)
    | st.binary(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=3)
        | st.dictionaries(st.text(max_size=6) | st.integers(-9, 9) | st.none() | st.booleans(), inner, max_size=3)
    ),
    max_leaves=12,
)
maps = st.fixed_dictionaries(
    {"type": names | json_values},
    optional={
        "data": st.dictionaries(st.text(max_size=6), json_values, max_size=3) | json_values,
        "source": names,
        "token": st.text(max_size=20),
    },
)
frames = st.one_of(
    st.binary(max_size=64),
    st.builds(msgspec.msgpack.encode, maps),
    st.builds(msgspec.msgpack.encode, json_values),
    # A well-formed map whose string is not UTF-8.
    st.builds(
        lambda raw: b"\x82\xa4type\xa1t\xa4data\x81\xa1x" + bytes([0xA1 + len(raw)]) + raw + b"\xff",
        st.binary(max_size=8),
    ),
    st.sampled_from([b"\x91" * 3000, b"\xc7\x01\x05x", b"\xdf\xff\xff\xff\xff"]),
)
messages = (
    st.lists(frames, min_size=1, max_size=4)
    | st.tuples(st.binary(max_size=8), frames).map(list)
    | st.builds(lambda m: [m["type"].encode() if isinstance(m["type"], str) else b"x", msgspec.msgpack.encode(m)], maps)
)


@contextmanager
def ingest_sender(endpoint: str) -> Iterator[zmq.Socket[bytes]]:
    """An XPUB connected to the bus's ingest, returned once the bus has subscribed."""
    context = zmq.Context()
    sender = context.socket(zmq.XPUB)
    try:
        sender.setsockopt(zmq.LINGER, 1000)
        sender.connect(endpoint)
        # The bus's subscription arriving is the proof that nothing sent from now on is dropped.
        assert sender.poll(int(WAIT * 1000)), "the bus never subscribed to its ingest"
        assert sender.recv()[:1] == b"\x01"
        yield sender
    finally:
        sender.close()
        context.term()


def valid(n: int, *, token: str | None) -> list[bytes]:
    body: dict[str, Any] = {"type": "fuzz.ok", "data": {"n": n}}
    if token is not None:
        body["token"] = token
    return [b"fuzz.ok", msgspec.msgpack.encode(body)]


@pytest.mark.parametrize("token", [None, TOKEN], ids=["open", "token"])
def test_zmq_frames_never_crash_the_ingest_and_valid_messages_keep_arriving(
    bus_process: Callable[..., BusProcess], token: str | None
) -> None:
    extra = ["--token", token] if token else []
    bus = bus_process("--max-message", str(MAX_MESSAGE), "--quiet", *extra)
    auth = f"?token={token}" if token else ""
    stream = urllib.request.urlopen(f"{bus.url}/api/dev/events{auth}", timeout=WAIT)
    sent: list[int] = []
    try:
        with ingest_sender(bus.endpoints["ingest"]) as sender:

            @settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
            @given(message=messages)
            def check(message: list[bytes]) -> None:
                sender.send_multipart(message)
                sender.send_multipart(valid(len(sent), token=token))
                sent.append(len(sent))

            check()
            sender.send_multipart(valid(-1, token=token))
        # Heartbeats (comment lines) may fall between frames on a slow run.
        lines = (line for line in stream if not line.startswith(b":"))
        for line in (b"retry: 1000\n", None, b"\n"):
            got = next(lines)
            assert line is None or got == line
        seen = []
        while True:
            assert next(lines).startswith(b"id: ")
            event = json.loads(next(lines).removeprefix(b"data: "))
            assert next(lines) == b"\n"
            check_event(event)
            if event["type"] == "fuzz.ok":
                if event["data"]["n"] == -1:
                    break
                seen.append(event["data"]["n"])
        # Every valid message arrived, in order; whatever else was recorded was valid too.
        assert seen == sent
    finally:
        stream.close()
    assert bus.stop() == 0
