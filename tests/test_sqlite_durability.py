"""The SQLite store from the outside: acknowledged events survive `kill -9`, and tabs resume across restarts."""

from __future__ import annotations

import os
import signal
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from blackbox import history, post_event, sse_stream
from support import BusProcess, bus_env

pytestmark = pytest.mark.slow

EVENTS = 1000
SENDERS = 4  # concurrent senders, so that several acknowledgements are in flight when the bus dies


def test_every_acknowledged_event_survives_kill_9(bus_process: Callable[..., BusProcess], tmp_path: Path) -> None:
    store = f"sqlite:{tmp_path / 'bus.sqlite'}"
    bus = bus_process("--store", store, "--quiet")
    acked: dict[int, str] = {}

    def send(sender: int) -> None:
        for n in range(sender, EVENTS, SENDERS):
            acked[n] = post_event(bus, "durable.event", {"n": n})

    with ThreadPoolExecutor(SENDERS) as pool:
        list(pool.map(send, range(SENDERS)))
    os.kill(bus.proc.pid, signal.SIGKILL)  # right after the last 200
    assert bus.proc.wait(timeout=10) == -signal.SIGKILL

    restarted = bus_process("--store", store, "--quiet")
    events = history(restarted, limit=EVENTS)
    assert len(events) == EVENTS
    # Every acknowledged event is there, with the id it was acknowledged with.
    assert {event["data"]["n"]: event["id"] for event in events} == acked
    assert len({event["id"] for event in events}) == EVENTS
    # Each sender's events are in the order it sent them.
    position = {event["id"]: index for index, event in enumerate(events)}
    for sender in range(SENDERS):
        places = [position[acked[n]] for n in range(sender, EVENTS, SENDERS)]
        assert places == sorted(places)

    # A tab that saw the first half before the crash resumes with the rest, then live events.
    middle = events[EVENTS // 2 - 1]["id"]
    with sse_stream(restarted, last_event_id=middle) as stream:
        replayed = stream.events(EVENTS // 2)
        assert [event["id"] for event in replayed] == [event["id"] for event in events[EVENTS // 2 :]]
        live = [post_event(restarted, "after.crash", {"n": n}) for n in range(3)]
        assert [event["id"] for event in stream.events(3)] == live
    assert set(live).isdisjoint(acked.values())


@pytest.mark.parametrize("store", ["sqlite", "memory"])
def test_a_stream_resumes_across_a_graceful_restart(
    bus_process: Callable[..., BusProcess], tmp_path: Path, store: str
) -> None:
    url = f"sqlite:{tmp_path / 'bus.sqlite'}" if store == "sqlite" else "memory"
    bus = bus_process("--store", url, "--quiet")
    with sse_stream(bus) as stream:
        before = [post_event(bus, "before.restart", {"n": n}) for n in range(5)]
        assert [event["id"] for event in stream.events(5)] == before
        assert bus.stop() == 0

    # The same store, named by the environment this time.
    restarted = bus_process("--quiet", env=bus_env(DEVBUS_STORE=url))
    while_away = [post_event(restarted, "after.restart", {"n": n}) for n in range(3)]
    with sse_stream(restarted, last_event_id=before[-1]) as stream:
        live = [post_event(restarted, "after.restart", {"n": n}) for n in range(3, 5)]
        if store == "memory":
            # The memory store forgot everything: the tab is told so, once, then gets what is new.
            gap = stream.event()
            assert gap["type"] == "devbus.gap"
            assert gap["data"]["last_event_id"] == before[-1]
        got = stream.events(5)
    assert [event["type"] for event in got] == ["after.restart"] * 5
    assert [event["id"] for event in got] == while_away + live
    assert set(while_away + live).isdisjoint(before)
