"""The Python client: Publisher / AsyncPublisher / emit, BusUnavailable, and the public API."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable
from typing import Any

import pytest
from support import ROOT, WAIT, BusFactory, BusProcess, bus_env, fetch_history, history, wait_for_history, wait_until

import devbus
from devbus.bus.keys import ENDPOINTS
from devbus.client.outbox import AWAY_LINGER_S

ANY_PORT = "tcp://127.0.0.1:*"
BURST = 100_000


def free_endpoint() -> str:
    """A loopback TCP endpoint that nothing listens on."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return f"tcp://127.0.0.1:{probe.getsockname()[1]}"


def test_all_is_sorted_and_complete() -> None:
    public = {name for name in dir(devbus) if not name.startswith("_") and name not in {"annotations"}}
    modules = {name for name in public if type(getattr(devbus, name)).__name__ == "module"}
    assert devbus.__all__ == sorted(devbus.__all__)
    assert set(devbus.__all__) - {"__version__"} == public - modules
    for name in ("Publisher", "AsyncPublisher", "Subscriber", "AsyncSubscriber", "emit", "BusUnavailable"):
        assert name in devbus.__all__


def test_waiting_for_a_bus_that_is_not_there_raises_bus_unavailable_naming_the_address() -> None:
    endpoint = free_endpoint()
    started = time.monotonic()
    with (
        devbus.Publisher(ingest=endpoint, timeout=0.3) as publisher,
        pytest.raises(devbus.BusUnavailable, match=endpoint.replace(".", r"\.")),
    ):
        publisher.wait_for_bus()
    assert time.monotonic() - started < WAIT


async def test_async_publisher_waiting_for_no_bus_raises_bus_unavailable() -> None:
    async with devbus.AsyncPublisher(ingest=free_endpoint(), timeout=0.3) as publisher:
        with pytest.raises(devbus.BusUnavailable, match="No devbus at"):
            await publisher.wait_for_bus()


def test_without_a_bus_emit_neither_blocks_nor_raises_and_a_later_bus_gets_every_event_in_order(
    bus_process: Callable[..., BusProcess], caplog: pytest.LogCaptureFixture
) -> None:
    """A backend started before its bus: emit used to wait 5 s and raise BusUnavailable."""
    endpoint = free_endpoint()
    with devbus.Publisher(ingest=endpoint) as publisher:
        started = time.perf_counter()
        for n in range(1000):
            publisher.emit("early.event", {"n": n})
        per_emit = (time.perf_counter() - started) / 1000
        wait_until(lambda: "is not reachable" in caplog.text)
        bus = bus_process("--quiet", "--ingest", endpoint)
        wait_until(lambda: len(bus_history(bus, "early.*")) == 1000)
        assert publisher.connected and publisher.dropped == 0
    assert [e["data"]["n"] for e in bus_history(bus, "early.*")] == list(range(1000))
    # Microseconds, not a connection attempt: a generous bound for a loaded machine.
    assert per_emit < 0.002, f"{per_emit * 1e6:.0f} µs per emit"
    assert caplog.text.count("is not reachable") == 1


def test_a_script_without_a_bus_exits_at_once_and_says_in_one_line_what_it_could_not_deliver() -> None:
    endpoint = free_endpoint()
    started = time.monotonic()
    script = subprocess.run(
        [sys.executable, "-c", "import devbus; devbus.emit('a.one'); devbus.emit('a.two', {'n': 2})"],
        env=bus_env(DEVBUS_INGEST=endpoint),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    elapsed = time.monotonic() - started
    assert script.returncode == 0
    assert script.stderr.strip().splitlines() == [
        f"2 events not delivered: no devbus at {endpoint}; start one with `devbus run`, or point DEVBUS_INGEST at it"
    ]
    assert elapsed < WAIT / 2


async def test_an_async_publisher_started_without_a_bus_delivers_once_one_runs(
    bus_process: Callable[..., BusProcess],
) -> None:
    endpoint = free_endpoint()
    async with devbus.AsyncPublisher(ingest=endpoint) as publisher:
        for n in range(100):
            await publisher.emit("later.event", {"n": n})
        bus = await asyncio.to_thread(bus_process, "--quiet", "--ingest", endpoint)
        await publisher.wait_for_bus()
    assert [e["data"]["n"] for e in await asyncio.to_thread(bus_history, bus, "later.*")] == list(range(100))


def test_emit_refuses_an_invalid_event_before_sending() -> None:
    with pytest.raises(devbus.InvalidEvent, match="`type`"):
        devbus.emit("has space")


async def test_publisher_delivers_type_data_and_source(make_bus: BusFactory) -> None:
    client = await make_bus(ingest=ANY_PORT)
    endpoint = client.app[ENDPOINTS]["ingest"]

    def send() -> None:
        with devbus.Publisher(ingest=endpoint, source="backend") as publisher:
            publisher.emit("agent.created", {"id": 1})
            publisher.emit("agent.deleted", {"id": 1}, source="worker")
            publisher.emit("agent.pinged")

    # The sync publisher's close waits for delivery, so it runs beside the loop.
    await asyncio.to_thread(send)
    events = await history(client, count=3)
    assert [(e["type"], e["data"], e["source"]) for e in events] == [
        ("agent.created", {"id": 1}, "backend"),
        ("agent.deleted", {"id": 1}, "worker"),
        ("agent.pinged", {}, "backend"),
    ]


async def test_async_publisher_delivers_in_order(make_bus: BusFactory) -> None:
    client = await make_bus(ingest=ANY_PORT)
    async with devbus.AsyncPublisher(ingest=client.app[ENDPOINTS]["ingest"], hold=100) as publisher:
        # More than the queue holds: the sender is slowed down, nothing is dropped.
        for n in range(2000):
            await publisher.emit("count.up", {"n": n})
        assert publisher.dropped == 0
    events = await history(client, count=2000)
    assert [e["data"]["n"] for e in events] == list(range(2000))


EMIT_BURST = f"""
import devbus
with devbus.Publisher() as bus:
    for n in range({BURST}):
        bus.emit("burst.tick", {{"n": n}})
"""


def read_sse_ids(stream: Any, count: int, seen: list[tuple[str, int]]) -> None:
    """Collect (id, n) of ``count`` events from an SSE response."""
    event_id = ""
    for line in stream:
        if line.startswith(b"id: "):
            event_id = line[4:].strip().decode()
        elif line.startswith(b"data: ") and event_id:
            seen.append((event_id, json.loads(line[6:])["data"]["n"]))
            if len(seen) == count:
                return


@pytest.mark.slow
def test_a_script_that_emits_100k_events_and_exits_delivers_all_in_order(
    bus_process: Callable[..., BusProcess],
) -> None:
    bus = bus_process("--history", str(BURST), "--subscriber-buffer", "64MiB", "--quiet")
    seen: list[tuple[str, int]] = []
    with urllib.request.urlopen(f"{bus.url}/api/dev/events?types=burst.*", timeout=WAIT) as stream:
        assert b'"connected"' in stream.readline() + stream.readline()
        reader = threading.Thread(target=read_sse_ids, args=(stream, BURST, seen))
        reader.start()
        started = time.monotonic()
        script = subprocess.run(
            [sys.executable, "-c", EMIT_BURST],
            env=bus_env(DEVBUS_INGEST=bus.endpoints["ingest"]),
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert script.returncode == 0, script.stderr
        reader.join(timeout=60)
        elapsed = time.monotonic() - started
    assert not reader.is_alive(), f"SSE subscriber got {len(seen)} of {BURST}"
    assert [n for _, n in seen] == list(range(BURST))
    with urllib.request.urlopen(f"{bus.url}/api/dev/history?limit={BURST}&types=burst.tick", timeout=WAIT) as reply:
        events = json.load(reply)["events"]
    assert [e["data"]["n"] for e in events] == list(range(BURST))
    # The stream and the history agree id for id, and ids strictly increase.
    assert [e["id"] for e in events] == [event_id for event_id, _ in seen]
    seqs = [int(e["id"].rsplit("-", 1)[1]) for e in events]
    assert seqs == sorted(set(seqs))
    print(f"{BURST} events from a separate process in {elapsed:.2f}s")


def bus_history(bus: BusProcess, types: str) -> list[dict[str, Any]]:
    return fetch_history(bus, types=types)


def test_a_live_publisher_holds_events_while_the_bus_restarts(bus_process: Callable[..., BusProcess]) -> None:
    first = bus_process("--quiet")
    ingest = first.endpoints["ingest"]
    with devbus.Publisher(ingest=ingest) as publisher:
        publisher.wait_for_bus()
        publisher.emit("restart.before")
        wait_until(lambda: len(bus_history(first, "restart.*")) == 1)
        assert first.stop() == 0
        wait_until(lambda: not publisher.connected)
        for n in range(500):
            publisher.emit("restart.gap", {"n": n})
        second = bus_process("--quiet", "--ingest", ingest)
        publisher.emit("restart.after")
        wait_until(lambda: len(bus_history(second, "restart.*")) == 501)
        assert publisher.connected
        assert publisher.dropped == 0
    events = bus_history(second, "restart.*")
    assert [e.get("data", {}).get("n") for e in events[:-1]] == list(range(500))
    assert events[-1]["type"] == "restart.after"


def past_a_restart(gone: float) -> None:
    """Wait until a bus that went away at ``gone`` is no longer waited for as a restart.

    The condition is time itself: how long the bus has been away (plus a margin for the
    publisher to see it go).
    """
    wait_until(lambda: time.monotonic() - gone > AWAY_LINGER_S + 0.2, within=AWAY_LINGER_S + WAIT)


def test_a_script_that_exits_while_the_bus_restarts_waits_for_it_and_delivers_everything(
    bus_process: Callable[..., BusProcess], caplog: pytest.LogCaptureFixture
) -> None:
    first = bus_process("--quiet")
    ingest = first.endpoints["ingest"]
    publisher = devbus.Publisher(ingest=ingest)
    publisher.wait_for_bus()
    first.proc.send_signal(signal.SIGTERM)
    wait_until(lambda: not publisher.connected)
    for n in range(100):
        publisher.emit("restart.held", {"n": n})
    assert first.proc.wait(timeout=WAIT) == 0
    gone = time.monotonic()
    # The script ends during a slow restart, well after the log said that the bus is not reachable.
    wait_until(lambda: "is not reachable" in caplog.text and time.monotonic() - gone > 1.5)
    closing = threading.Thread(target=publisher.close)
    closing.start()
    second = bus_process("--quiet", "--ingest", ingest)
    closing.join(timeout=WAIT)
    assert not closing.is_alive()
    assert publisher.undelivered == 0
    assert [e["data"]["n"] for e in wait_for_history(second, 100, types="restart.*")] == list(range(100))


def test_closing_once_the_bus_is_away_past_a_restart_does_not_wait_and_reports_what_it_held(
    bus_process: Callable[..., BusProcess], caplog: pytest.LogCaptureFixture
) -> None:
    """A FastAPI backend stalled 6-7 s at every Ctrl-C and `uvicorn --reload` while the bus was away."""
    first = bus_process("--quiet")
    ingest = first.endpoints["ingest"]
    publisher = devbus.Publisher(ingest=ingest)
    publisher.wait_for_bus()
    assert first.stop() == 0
    gone = time.monotonic()
    wait_until(lambda: "is not reachable" in caplog.text)
    for n in range(3):
        publisher.emit("away.held", {"n": n})
    past_a_restart(gone)
    started = time.monotonic()
    publisher.close()
    took = time.monotonic() - started
    assert took < 0.5, f"close waited {took:.2f}s for a bus that was not there"
    assert publisher.undelivered == 3
    assert f"3 events not delivered: the devbus at {ingest} went away and was not back" in caplog.text


def test_what_overflows_the_hold_while_the_bus_is_away_is_counted_and_logged(
    bus_process: Callable[..., BusProcess], caplog: pytest.LogCaptureFixture
) -> None:
    first = bus_process("--quiet")
    ingest = first.endpoints["ingest"]
    with devbus.Publisher(ingest=ingest, hold=50) as publisher:
        publisher.wait_for_bus()
        assert first.stop() == 0
        wait_until(lambda: not publisher.connected)
        for n in range(200):
            publisher.emit("hold.gap", {"n": n})
        assert publisher.dropped > 0
        wait_until(lambda: "then dropping new ones" in caplog.text)
        second = bus_process("--quiet", "--ingest", ingest)
        wait_until(lambda: publisher.connected)
        publisher.emit("hold.after")
        wait_until(lambda: len(bus_history(second, "hold.after")) == 1)
    held = [e["data"]["n"] for e in bus_history(second, "hold.gap")]
    # The oldest events are kept in order; only the newest beyond the bound are dropped.
    assert held == list(range(len(held)))
    assert len(held) + publisher.dropped == 200
    assert f"{publisher.dropped} events were dropped while it was away" in caplog.text


def test_subscriber_without_a_bus_raises_bus_unavailable() -> None:
    endpoint = free_endpoint()
    with pytest.raises(devbus.BusUnavailable, match=endpoint.replace(".", r"\.")):
        devbus.Subscriber(egress=endpoint, timeout=0.3)


async def test_async_subscriber_without_a_bus_raises_bus_unavailable() -> None:
    with pytest.raises(devbus.BusUnavailable, match="egress"):
        async with devbus.AsyncSubscriber(egress=free_endpoint(), timeout=0.3):
            pass


def test_subscriber_iterates_matching_events_from_a_real_bus(bus_process: Callable[..., BusProcess]) -> None:
    bus = bus_process("--quiet")

    def trigger(event_type: str) -> None:
        body = json.dumps({"event_type": event_type, "data": {"t": event_type}}).encode()
        request = urllib.request.Request(
            f"{bus.url}/api/dev/trigger", data=body, headers={"Content-Type": "application/json"}
        )
        urllib.request.urlopen(request, timeout=WAIT).close()

    with devbus.Subscriber(types=["agent.*", "sync.ping"], egress=bus.endpoints["egress"]) as subscriber:
        # Connected is not yet subscribed (ZeroMQ's slow joiner): ping until one arrives.
        deadline = time.monotonic() + WAIT
        while subscriber.receive(timeout=0.05) is None:
            assert time.monotonic() < deadline
            trigger("sync.ping")
        for event_type in ("rental.created", "agent.created", "sync.pong", "agent.deleted"):
            trigger(event_type)
        received: list[devbus.Event] = []
        while len(received) < 2:
            event = subscriber.receive(timeout=WAIT)
            assert event is not None, received
            if event.type != "sync.ping":
                received.append(event)
    assert [(e.type, e.data, e.source) for e in received] == [
        ("agent.created", {"t": "agent.created"}, "trigger"),
        ("agent.deleted", {"t": "agent.deleted"}, "trigger"),
    ]
    assert isinstance(received[0], devbus.Event)


def test_events_the_bus_refuses_are_counted_once_each_and_the_reason_logged_once(
    bus_process: Callable[..., BusProcess], caplog: pytest.LogCaptureFixture
) -> None:
    bus = bus_process("--quiet", "--token", "right")
    with devbus.Publisher(ingest=bus.endpoints["ingest"], token="wrong") as publisher:
        for n in range(5):
            publisher.emit("refused.event", {"n": n})
    assert publisher.rejected == 5
    assert publisher.undelivered == 0 and publisher.dropped == 0  # settled: refused for good, not held
    assert caplog.text.count("refused an event (zmq_token)") == 1
    assert "missing or wrong `token`" in caplog.text


def test_close_counts_what_the_bus_never_acknowledged(
    bus_process: Callable[..., BusProcess], caplog: pytest.LogCaptureFixture
) -> None:
    """A bus that is there but does not answer (stopped): close waits its linger, then says what is owed."""
    bus = bus_process("--quiet")
    publisher = devbus.Publisher(ingest=bus.endpoints["ingest"], linger=0.5)
    publisher.wait_for_bus()
    os.kill(bus.proc.pid, signal.SIGSTOP)
    try:
        for n in range(10):
            publisher.emit("never.acknowledged", {"n": n})
        started = time.monotonic()
        publisher.close()
        assert time.monotonic() - started < WAIT
    finally:
        os.kill(bus.proc.pid, signal.SIGCONT)
    assert publisher.undelivered == 10
    assert "10 events not delivered" in caplog.text
