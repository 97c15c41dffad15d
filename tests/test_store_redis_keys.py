"""The Redis store's keys hold what devbus writes there: one turned into another type is one outage, logged once.

Regression: with ``devbus:events`` set to a string while a bus ran, every call failed
but the reconnect check (a PING and the meta hash) passed, so the store came "back"
and went "unreachable" again a few times a second: about 190 log lines in 10 s.
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from typing import Any

import redis
from support import WAIT, BusProcess, RedisServer

Start = Callable[..., BusProcess]


def call(bus: BusProcess, path: str, body: dict[str, Any] | None = None) -> int:
    """One request to the bus: its status, 503 included."""
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(f"{bus.url}{path}", data=data, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=WAIT) as reply:
            return int(reply.status)
    except urllib.error.HTTPError as exc:
        return exc.code


def test_a_key_of_another_type_mid_run_is_one_outage_logged_once(bus_process: Start, redis_server: RedisServer) -> None:
    bus = bus_process("--quiet", "--store", redis_server.url)
    key = "devbus:events"
    event = {"event_type": "t.before", "data": {}}
    assert call(bus, "/api/dev/webhook", event) == 200
    client = redis.Redis.from_url(redis_server.url)
    try:
        client.delete(key)
        client.set(key, "not what devbus wrote")
        # Senders and readers keep asking while it lasts: three seconds of outage, long enough for many reconnects.
        deadline = time.monotonic() + WAIT
        while (store := bus.health()["store"]).get("down_s", 0.0) < 3.0:
            assert time.monotonic() < deadline, f"the store never stayed down: {store}"
            assert call(bus, "/api/dev/webhook", event) in (200, 503)
            call(bus, "/api/dev/history")
            time.sleep(0.1)  # a sender's pace, not a synchronisation
        assert f"The key {key} on {redis_server.url} holds a string" in store["error"]
        assert call(bus, "/api/dev/webhook", event) == 503
        client.delete(key)
        deadline = time.monotonic() + WAIT
        while call(bus, "/api/dev/webhook", {"event_type": "t.after", "data": {}}) != 200:
            assert time.monotonic() < deadline, "the store did not come back"
            time.sleep(0.05)  # polling the store's recovery, bounded by the deadline
    finally:
        client.close()
    assert sum("is unreachable" in line for line in bus.lines) == 1, bus.lines
    assert sum("is back after" in line for line in bus.lines) == 1, bus.lines
