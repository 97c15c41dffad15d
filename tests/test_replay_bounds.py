"""What a connection that asks for a lot and reads nothing costs the bus: its buffer plus one page.

History is filled far past what the bound allows for all the clients together, so a bus
that built each replay or /history answer in full would blow the bound with its first client.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
from blackbox import MIB, Stalled, fill_history, history, probe, sse_stream, wait_idle
from support import BusProcess

pytestmark = pytest.mark.slow

BUFFER = 256 * 1024  # --subscriber-buffer
HISTORY = 16 * MIB  # --history-bytes
EVENT = 4096  # bytes of padding per event: about 4,000 events retained
CLIENTS = 8
# "One page" is a bounded read of the store; whatever size the bus picks, we accept up to this.
PAGE = 1 * MIB
# The interpreter's and allocator's own growth, and aiohttp's state for a few connections.
SLACK = 16 * MIB
BOUND = CLIENTS * (BUFFER + PAGE) + SLACK
# The bound must be far below what the unbounded behaviour (a copy of history per client) costs.
assert CLIENTS * HISTORY > 4 * BOUND


def filled_bus(bus_process: Callable[..., BusProcess]) -> tuple[BusProcess, list[str]]:
    """A bus whose history is full (its oldest events already dropped); the ids of all events sent."""
    bus = bus_process("--history-bytes", str(HISTORY), "--subscriber-buffer", str(BUFFER), "--quiet")
    ids = fill_history(bus, HISTORY + HISTORY // 8, event_bytes=EVENT)
    wait_idle(bus)
    return bus, ids


def hold_stalled(bus: BusProcess, path: str, headers: dict[str, str]) -> list[Stalled]:
    """Open CLIENTS connections that never read; fail as soon as the bus's memory passes BOUND."""
    memory = probe(bus)
    before = memory.rss()
    memory.reset_peak()
    clients: list[Stalled] = []
    try:
        for count in range(1, CLIENTS + 1):
            clients.append(Stalled(bus, path, headers=headers))
            assert clients[-1].status == 200
            wait_idle(bus)
            grown = memory.peak() - before
            assert grown <= BOUND, (
                f"{count} stalled clients of {path} grew the bus by {grown / MIB:.1f} MiB; "
                f"the bound for {CLIENTS} is {BOUND / MIB:.1f} MiB"
            )
    except BaseException:
        for client in clients:
            client.close()
        raise
    return clients


def test_stale_resumes_that_do_not_read_stay_within_the_bound(bus_process: Callable[..., BusProcess]) -> None:
    bus, ids = filled_bus(bus_process)
    stale = ids[0]  # long dropped from history: everything retained is replayed after a gap
    clients = hold_stalled(bus, "/api/dev/events", {"Last-Event-ID": stale})
    try:
        # Bounded is not truncated: a client that does read gets the gap, then every retained event.
        with sse_stream(bus, last_event_id=stale) as stream:
            gap = stream.event()
            assert gap["type"] == "devbus.gap"
            first = ids.index(stream.event()["id"])
            assert first > 0
            rest = stream.events(len(ids) - first - 1)
            assert [event["id"] for event in rest] == ids[first + 1 :]
    finally:
        for client in clients:
            client.close()


def test_history_requests_that_do_not_read_stay_within_the_bound(bus_process: Callable[..., BusProcess]) -> None:
    bus, ids = filled_bus(bus_process)
    clients = hold_stalled(bus, "/api/dev/history?limit=10000", {})
    try:
        # Bounded is not truncated: a client that does read gets every retained event, oldest first.
        retained = [event["id"] for event in history(bus, limit=10000)]
        assert len(retained) > HISTORY // (EVENT + 512), f"/history?limit=10000 answered {len(retained)} events"
        assert retained == ids[-len(retained) :]
    finally:
        for client in clients:
            client.close()
