"""Refusals are counted every time and logged once per reason a minute, on ingest and egress alike.

Regression: a CURVE, PLAIN or ZMTP 2 peer (libzmq sends its 10-byte signature, reads the
bus's greeting, sees the mismatch and resets) was neither logged nor counted, and the
egress logged handshake errors once per connection: 7,802 identical lines in 3 s from one
reconnecting peer.
"""

from __future__ import annotations

import asyncio
import logging
import re
import socket
import struct
import time
import urllib.request
from collections import Counter
from collections.abc import Callable

import pytest
import zmq
from prometheus_client.parser import text_string_to_metric_families
from support import WAIT, BusProcess

from devbus.bus.metrics import Metrics
from devbus.bus.refusals import LOG_EVERY, Refusals
from devbus.zmtp import GREETING

Start = Callable[..., BusProcess]

SIGNATURE = GREETING[:10]
# What a peer sends before it is refused, and the reason it is counted under.
BAD_GREETINGS = {
    # libzmq set up for CURVE or PLAIN, or speaking ZMTP 2: its signature, then a reset once it reads ours.
    "hangs-up-after-signature": (SIGNATURE, "zmq_hangup"),
    "curve": (GREETING[:12] + b"CURVE".ljust(20, b"\x00") + GREETING[32:], "zmq_mechanism"),
    "zmtp-2": (SIGNATURE + b"\x01\x01\x00\x00", "zmq_version"),
    "not-zeromq": (b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n", "zmq_greeting"),
}
LINE = re.compile(r"WARNING .*refused a ZeroMQ (ingest|egress) connection \((zmq_\w+)\)")


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_each_reason_is_logged_once_a_minute_and_counted_every_time(caplog: pytest.LogCaptureFixture) -> None:
    metrics, clock = Metrics(), Clock()
    refused = Refusals(metrics, what="a ZeroMQ ingest connection", clock=clock)
    caplog.set_level(logging.WARNING, logger="devbus")
    for _ in range(5):
        refused("zmq_mechanism", "CURVE is not supported")
        clock.now += 1
    refused("zmq_version", "ZMTP 2 is too old")
    clock.now += LOG_EVERY
    refused("zmq_mechanism", "PLAIN is not supported")
    lines = [record.getMessage() for record in caplog.records]
    assert len(lines) == 3
    assert lines[0].startswith("refused a ZeroMQ ingest connection (zmq_mechanism): CURVE is not supported;")
    assert "(zmq_version): ZMTP 2 is too old;" in lines[1]
    assert "(zmq_mechanism): PLAIN is not supported; 4 more since the last line;" in lines[2]
    text = metrics.render().decode()
    assert 'devbus_rejected_total{reason="zmq_mechanism"} 6.0' in text
    assert 'devbus_rejected_total{reason="zmq_version"} 1.0' in text


def reconnect(endpoint: str, wire: bytes, times: int) -> None:
    """Connect ``times`` times, send ``wire``; read the bus's greeting (or its close), then reset the connection."""
    host, _, port = endpoint.removeprefix("tcp://").rpartition(":")
    for _ in range(times):
        with socket.create_connection((host, int(port)), timeout=WAIT) as conn:
            conn.sendall(wire)
            conn.recv(64)
            conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))


def rejected(bus: BusProcess) -> dict[str, float]:
    with urllib.request.urlopen(f"{bus.url}/metrics", timeout=WAIT) as reply:
        text = reply.read().decode()
    return {
        sample.labels["reason"]: sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == "devbus_rejected_total"
    }


async def test_peers_reconnecting_with_bad_greetings_give_one_line_per_reason_and_side(bus_process: Start) -> None:
    bus = bus_process("--quiet")
    times = 200
    for wire, _ in BAD_GREETINGS.values():
        for side in ("ingest", "egress"):
            await asyncio.to_thread(reconnect, bus.endpoints[side], wire, times)
    expected = {reason: 2.0 * times for _, reason in BAD_GREETINGS.values()}
    deadline = time.monotonic() + WAIT
    while rejected(bus) != expected:  # the last resets reach the bus a moment later
        assert time.monotonic() < deadline, f"counted {rejected(bus)}, not {expected}"
        await asyncio.sleep(0.05)
    logged = Counter(match.groups() for line in bus.lines if (match := LINE.search(line)))
    assert logged == {(side, reason): 1 for _, reason in BAD_GREETINGS.values() for side in ("ingest", "egress")}


@pytest.mark.parametrize("mechanism", ["curve", "plain"])
async def test_a_libzmq_peer_with_another_mechanism_is_counted_on_both_sides(
    bus_process: Start, mechanism: str
) -> None:
    """libzmq itself, set up for CURVE or PLAIN: refused on ingest and egress, each counted, each side logged."""
    bus = bus_process("--quiet")
    context = zmq.Context()
    try:
        for kind, side in ((zmq.PUB, "ingest"), (zmq.SUB, "egress")):
            peer = context.socket(kind)
            peer.setsockopt(zmq.LINGER, 0)
            if mechanism == "curve":
                public, secret = zmq.curve_keypair()
                peer.curve_publickey, peer.curve_secretkey, peer.curve_serverkey = (
                    public,
                    secret,
                    zmq.curve_keypair()[0],
                )
            else:
                peer.plain_username, peer.plain_password = b"user", b"secret"
            monitor = peer.get_monitor_socket(
                zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL | zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL
            )
            peer.connect(bus.endpoints[side])
            assert monitor.poll(int(WAIT * 1000)), "libzmq saw no failed handshake"
            monitor.close()
            peer.close()
        deadline = time.monotonic() + WAIT
        while sum(rejected(bus).get(reason, 0) for reason in ("zmq_hangup", "zmq_mechanism")) < 2:
            assert time.monotonic() < deadline, f"counted {rejected(bus)}"
            await asyncio.sleep(0.05)
        sides = {match.group(1) for line in bus.lines if (match := LINE.search(line))}
        assert sides == {"ingest", "egress"}
    finally:
        context.term()
