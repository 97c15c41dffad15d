"""Evicting a subscriber that reads nothing ends its connection at once, seen from the client and the bus."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from blackbox import Stalled, held_peers, metric
from support import BusProcess, wait_until

pytestmark = pytest.mark.slow

BUFFER = "64KiB"  # a small --subscriber-buffer: a stalled reader passes it after a few batches
PAD = "x" * 4096
MOST_BATCHES = 500  # 100 MB: a stalled subscriber is evicted long before


def publish_until_evicted(bus: BusProcess, evictions: int) -> None:
    """Publish batches until the bus has evicted ``evictions`` subscribers in all."""
    for _ in range(MOST_BATCHES):
        bus.post_batch([("flood.event", {"pad": PAD})] * 50)
        if metric(bus, "devbus_evictions_total") >= evictions:
            return
    raise AssertionError(f"fewer than {evictions} evictions after {MOST_BATCHES} batches")


def test_an_evicted_stalled_stream_is_closed_within_a_second(bus_process: Callable[..., BusProcess]) -> None:
    bus = bus_process("--subscriber-buffer", BUFFER, "--quiet")
    stalled = Stalled(bus, "/api/dev/events")
    try:
        assert stalled.status == 200
        wait_until(lambda: stalled.port in held_peers(bus), what="the bus holding the stream")
        assert bus.health()["subscribers"] == 1

        publish_until_evicted(bus, 1)
        # The bus lets go of the socket itself, within a second; it does not wait for the client to read.
        wait_until(lambda: stalled.port not in held_peers(bus), within=1.0, what="the bus closing the socket")
        # The client sees the end of the stream as soon as it reads what was already in flight.
        stalled.read_to_end(within=1.0)
        assert bus.health()["subscribers"] == 0
    finally:
        stalled.close()


def test_stalled_readers_never_exceed_max_subscribers(bus_process: Callable[..., BusProcess]) -> None:
    cap, rounds = 4, 5
    bus = bus_process("--max-subscribers", str(cap), "--subscriber-buffer", BUFFER, "--quiet")
    opened: list[Stalled] = []

    def held() -> int:
        return len(held_peers(bus) & {client.port for client in opened})

    try:
        for round_ in range(rounds):
            fresh = [Stalled(bus, "/api/dev/events") for _ in range(cap)]
            opened += fresh
            # The slots of the evicted streams are free again...
            assert [client.status for client in fresh] == [200] * cap
            over = Stalled(bus, "/api/dev/events")
            over.close()
            assert over.status == 503  # ...and the cap still holds.
            wait_until(lambda: held() == cap, what=f"round {round_ + 1}: the bus holding {cap} streams")
            publish_until_evicted(bus, (round_ + 1) * cap)
            # ...because the evicted ones are really gone, not kept as zombies.
            wait_until(lambda: held() == 0, within=1.0, what=f"round {round_ + 1}: the bus closing evicted streams")
    finally:
        for client in opened:
            client.close()
