"""Entries another program wrote into the Redis stream (XADD), read back by real `devbus run` buses.

Before: one entry whose type was not UTF-8 ended the reader task silently (no bus delivered
anything after it, POSTs hung, health said "up"); a `j` holding "\\n\\nid: 1-1\\ndata: …"
framed a forged event into every SSE stream; a `\\n` in `t` added lines to `?named=1`
streams; /history answered 200 with invalid JSON.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
import redis
from blackbox import SSEFrames, expected_frame, history, metric, post_event
from support import BusProcess, RedisServer, bus_env_running_first, wait_until

STREAM = "devbus:events"
TIMESTAMP = b"2026-01-01T00:00:00.000000Z"


def tail(event_type: bytes = b"foreign.event", data: bytes = b"{}", *, extra: bytes = b"") -> bytes:
    """The `j` of an entry: the envelope's JSON after its id, as the bus writes it."""
    return b'"type":"%b","data":%b,"timestamp":"%b","source":"elsewhere"%b}' % (event_type, data, TIMESTAMP, extra)


# Entries that are not events, each as the flat field list XADD takes.
FOREIGN: dict[str, list[bytes]] = {
    "t-not-utf8": [b"t", b"\xff\xfe", b"j", tail()],
    "newline-in-t": [b"t", b"evil\nevent: forged", b"j", tail(b"evil\\nevent: forged")],
    "empty-t": [b"t", b"", b"j", tail(b"")],
    "frame-in-j": [b"t", b"foreign.event", b"j", b'\n\nid: 1-1\ndata: {"forged":true}'],
    "j-not-utf8": [b"t", b"foreign.event", b"j", tail(data=b'{"x":"\xff"}')],
    "j-not-json": [b"t", b"foreign.event", b"j", b"not json at all"],
    "data-array": [b"t", b"foreign.event", b"j", tail(data=b"[1,2]")],
    "data-string": [b"t", b"foreign.event", b"j", tail(data=b'"text"')],
    "no-timestamp": [b"t", b"foreign.event", b"j", b'"type":"foreign.event","data":{},"source":"elsewhere"}'],
    "forged-id": [b"t", b"foreign.event", b"j", tail(extra=b',"id":"1-1"')],
    "types-differ": [b"t", b"foreign.event", b"j", tail(b"other.event")],
    "too-deep": [b"t", b"foreign.event", b"j", tail(data=b'{"d":' + b"[" * 100 + b"]" * 100 + b"}")],
    "only-t": [b"t", b"foreign.event"],
    "only-j": [b"j", tail()],
    "extra-field": [b"t", b"foreign.event", b"j", tail(), b"x", b"1"],
}
# Valid, but spread over lines: delivered, on one line.
PRETTY = [
    b"t",
    b"pretty.event",
    b"j",
    b'"type":"pretty.event",\r\n"data":{"a":\n1},\n"timestamp":"%b",\n"source":"x"}' % TIMESTAMP,
]


def xadd(writer: redis.Redis, fields: list[bytes]) -> str:
    """Add an entry of ``fields`` (names and values in turn) as another program would; return its id."""
    entry_id = writer.xadd(STREAM, dict(zip(fields[::2], fields[1::2], strict=True)))
    assert isinstance(entry_id, bytes)
    return entry_id.decode()


def test_foreign_entries_are_skipped_counted_and_never_framed_while_every_event_reaches_every_bus(
    bus_process: Callable[..., BusProcess], redis_server: RedisServer
) -> None:
    a = bus_process("--store", redis_server.url)
    b = bus_process("--store", redis_server.url, "--quiet")
    live = [SSEFrames(a), SSEFrames(a, named=True), SSEFrames(b), SSEFrames(b, named=True)]
    writer = redis.Redis.from_url(redis_server.url)
    good: list[str] = []
    resumed: list[SSEFrames] = []
    try:
        for n, fields in enumerate(FOREIGN.values()):
            good.append(post_event(a if n % 2 else b, "good.event", {"n": n}))
            xadd(writer, fields)
        good.append(xadd(writer, PRETTY))
        good.append(post_event(a, "good.event", {"n": "last"}))

        # Both buses go on: /history of each is valid JSON holding exactly the events.
        events = history(a, limit=1000)
        assert [event["id"] for event in events] == good
        assert history(b, limit=1000) == events
        assert events[-2] == {
            "id": good[-2],
            "type": "pretty.event",
            "data": {"a": 1},
            "timestamp": TIMESTAMP.decode(),
            "source": "x",
        }
        # Every stream, live or resumed from the store, plain or named, frames exactly those events.
        resumed += [SSEFrames(a, named=True, last_event_id=good[0]), SSEFrames(b, last_event_id=good[0])]
        for stream in live:
            assert stream.until(good[-1]) == [expected_frame(event, named=stream.named) for event in events]
        for stream in resumed:
            assert stream.until(good[-1]) == [expected_frame(event, named=stream.named) for event in events[1:]]
    finally:
        for stream in live + resumed:
            stream.close()
        writer.close()
    for bus in (a, b):
        skipped = bus.health()["store"]["skipped"]
        # Each counted once, though read live and again by a resume and two /history.
        assert skipped["count"] == sum(skipped["reasons"].values()) == len(FOREIGN), skipped
        assert metric(bus, "devbus_store_skipped_total") == len(FOREIGN)
        assert bus.health()["store"]["reader"] == {"state": "up", "restarts": 0}
        assert "forged" not in json.dumps(bus.request("GET", "/api/dev/types"))
    # Logged once per reason (all within a minute), not once per entry; never a traceback.
    reasons = len(a.health()["store"]["skipped"]["reasons"])
    assert a.stop() == 0
    a.wait_for_line("^devbus stopped")
    logged = [line for line in a.lines if "skipped record" in line]
    assert len(logged) == reasons
    # One line each: nothing read from an entry starts a line of its own in the log.
    assert not any(line.startswith(("id: 1-1", "data: {", "event: forged")) for line in a.lines)
    assert not any("Traceback" in line for line in a.lines)


@pytest.fixture
def failing_reader(tmp_path: Path) -> dict[str, str]:
    """The environment of a bus whose Redis reader raises once, on its first page of entries."""
    return bus_env_running_first(
        tmp_path,
        "import devbus.bus.store.redis_reader as reader\n"
        "real = reader.read_reply\n"
        "failed = []\n"
        "def read_reply(checker, reply):\n"
        "    if reply and not failed:\n"
        "        failed.append(True)\n"
        "        raise RuntimeError('a reply nobody expected')\n"
        "    return real(checker, reply)\n"
        "reader.read_reply = read_reply\n",
    )


def test_a_reader_task_that_fails_is_started_again_and_health_says_so(
    bus_process: Callable[..., BusProcess], redis_server: RedisServer, failing_reader: dict[str, str]
) -> None:
    bus = bus_process("--store", redis_server.url, "--quiet", env=failing_reader)
    stream = SSEFrames(bus)
    try:
        # The first event's page makes the reader fail: it is read again by the restarted reader.
        ids = [post_event(bus, "after.failure", {"n": n}) for n in range(20)]
        frames = stream.until(ids[-1])
    finally:
        stream.close()
    assert [frame[0] for frame in frames] == [b"id: " + event_id.encode() for event_id in ids]
    reader = bus.health()["store"]["reader"]
    assert reader == {"state": "up", "restarts": 1, "error": "RuntimeError: a reply nobody expected"}
    assert metric(bus, "devbus_store_restarts_total") == 1
    bus.stop()
    [said] = [line for line in bus.lines if "stopped (RuntimeError" in line]
    assert said.endswith("starting it again in 0.05s")
    wait_until(lambda: bus.proc.poll() is not None)


def test_a_run_of_foreign_entries_longer_than_a_read_is_read_past(
    bus_process: Callable[..., BusProcess], redis_server: RedisServer
) -> None:
    bus = bus_process("--store", redis_server.url, "--quiet")
    first = post_event(bus, "before.run", {})
    writer = redis.Redis.from_url(redis_server.url)
    try:
        with writer.pipeline(transaction=False) as pipe:
            for n in range(2500):  # more than one XREAD (2,000 entries) and one page of a resume (1,000)
                pipe.xadd(STREAM, {b"t": b"foreign.event", b"j": b"%d" % n})
            pipe.execute()
    finally:
        writer.close()
    last = post_event(bus, "after.run", {})
    assert [event["id"] for event in history(bus, limit=10_000)] == [first, last]
    assert [event["id"] for event in history(bus, since=first)] == [last]
    assert bus.health()["store"]["skipped"]["count"] == 2500
