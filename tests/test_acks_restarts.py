"""Acknowledged publishing against real processes that die: nothing lost uncounted, nothing stored twice.

A Publisher in a child process emits numbered events while the test kills and
restarts the bus (kill -9 and SIGTERM) or its Redis. The child notes which
events ``emit`` dropped (the bus away past ``hold``); at the end every other event
must be in the store exactly once, in order.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from support import ROOT, WAIT, BusProcess, RedisServer, bus_env, fetch_history

pytestmark = pytest.mark.slow

PUBLISH = """
import json, sys, threading, time
import devbus

endpoint, rate, limit, hold = sys.argv[1], float(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
stop = threading.Event()
threading.Thread(target=lambda: (sys.stdin.readline(), stop.set()), daemon=True).start()
publisher = devbus.Publisher(ingest=endpoint, linger=60, hold=hold)
publisher.wait_for_bus()
print("started", flush=True)
dropped, n, started = [], 0, time.monotonic()
while n < limit and not stop.is_set():
    if rate and (ahead := started + n / rate - time.monotonic()) > 0:
        time.sleep(ahead)  # the pace of the publisher, not a wait for the test
    before = publisher.dropped
    publisher.emit("restart.tick", {"n": n})
    if publisher.dropped != before:
        dropped.append(n)
    n += 1
publisher.close()
report = {"emitted": n, "dropped": dropped, "undelivered": publisher.undelivered, "rejected": publisher.rejected}
print(json.dumps(report), flush=True)
"""

Start = Callable[..., BusProcess]


class Emitter:
    """The child process running PUBLISH."""

    def __init__(self, endpoint: str, *, rate: float = 0.0, limit: int = 10**9, hold: int = 10_000) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-c", PUBLISH, endpoint, str(rate), str(limit), str(hold)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env=bus_env(),
            cwd=ROOT,
        )
        assert self.proc.stdout is not None
        assert self.proc.stdout.readline() == "started\n"

    def finish(self, *, stop: bool) -> dict[str, Any]:
        """Tell it to stop (or let it send all) and return its report once it has closed."""
        assert self.proc.stdin is not None and self.proc.stdout is not None
        if stop:
            self.proc.stdin.write("stop\n")
            self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        assert self.proc.wait(timeout=WAIT * 6) == 0, line
        report: dict[str, Any] = json.loads(line)
        return report

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.communicate(timeout=WAIT)


def stored_so_far(bus: BusProcess) -> int:
    return int(bus.health()["events"])


def wait_until(condition: Callable[[], bool], *, within: float = WAIT * 3) -> None:
    deadline = time.monotonic() + within
    while not condition():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.05)  # polling the condition, bounded by the deadline


def wait_taken(bus: BusProcess, count: int) -> None:
    """Wait until this process of ``bus`` has taken ``count`` events."""
    wait_until(lambda: stored_so_far(bus) >= count)


def check(bus: BusProcess, report: dict[str, Any]) -> list[int]:
    """Every event not dropped is stored exactly once, in order; return what is stored."""
    stored = [event["data"]["n"] for event in fetch_history(bus, types="restart.tick", limit=1_000_000)]
    assert len(stored) == len(set(stored)), f"{len(stored) - len(set(stored))} events stored twice"
    assert stored == sorted(stored), "events out of order"
    missing = set(range(report["emitted"])) - set(report["dropped"]) - set(stored)
    assert not missing, f"{len(missing)} events lost uncounted, e.g. {sorted(missing)[:5]}"
    assert report["undelivered"] == 0 and report["rejected"] == 0
    return stored


def test_kill_9_of_a_sqlite_bus_ten_times_under_a_publisher_loses_nothing_uncounted(
    bus_process: Start, tmp_path: Path
) -> None:
    store = ("--store", f"sqlite:{tmp_path / 'bus.db'}", "--history", "1000000", "--quiet")
    bus = bus_process(*store)
    ingest = bus.endpoints["ingest"]
    # Room for every restart on a busy machine (a few seconds at 5k/s): what is dropped
    # would be counted, but then it would prove less.
    emitter = Emitter(ingest, rate=5000, hold=100_000)
    try:
        for _ in range(10):
            wait_taken(bus, 500)  # this bus has taken some of the stream
            os.kill(bus.proc.pid, signal.SIGKILL)
            assert bus.proc.wait(timeout=WAIT) == -signal.SIGKILL
            bus = bus_process(*store, "--ingest", ingest)
        wait_taken(bus, 500)
        report = emitter.finish(stop=True)
    finally:
        emitter.kill()
    stored = check(bus, report)
    assert not report["dropped"]
    print(f"{report['emitted']} emitted, all {len(stored)} stored once across 10 kills")


def test_sigterm_in_the_middle_of_a_burst_then_a_restart_loses_nothing_uncounted(
    bus_process: Start, tmp_path: Path
) -> None:
    store = ("--store", f"sqlite:{tmp_path / 'bus.db'}", "--history", "1000000", "--quiet")
    bus = bus_process(*store)
    ingest = bus.endpoints["ingest"]
    emitter = Emitter(ingest, limit=400_000)
    try:
        began = time.monotonic()
        wait_until(lambda: time.monotonic() - began >= 1.5 and stored_so_far(bus) > 0)
        assert bus.stop(timeout=WAIT * 3) == 0
        first = int(bus.wait_for_line(r"^devbus stopped after (\d+) events").group(1))
        assert 0 < first < 400_000, "the burst was not cut"
        bus = bus_process(*store, "--ingest", ingest)
        report = emitter.finish(stop=False)
    finally:
        emitter.kill()
    assert report["emitted"] == 400_000
    stored = check(bus, report)
    print(f"{first} stored before SIGTERM, {len(stored)} in all, {len(report['dropped'])} dropped")


class Poster:
    """A thread POSTing numbered events one at a time, each sent again after a 503 (which means not stored)."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.answered: list[int] = []  # 200
        self.unknown: list[int] = []  # 504: the bus could not say whether it was stored
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _post(self, n: int) -> int:
        body = json.dumps({"event_type": "http.tick", "data": {"n": n}}).encode()
        request = urllib.request.Request(
            f"{self.url}/api/dev/trigger", data=body, headers={"Content-Type": "application/json"}
        )
        try:
            with urllib.request.urlopen(request, timeout=WAIT * 2) as response:
                return int(response.status)
        except urllib.error.HTTPError as exc:
            return exc.code

    def _run(self) -> None:
        n = 0
        while not self._stop.is_set():
            status = self._post(n)
            if status == 503:
                time.sleep(0.02)  # the client's backoff before it sends the same event again
                continue
            (self.answered if status == 200 else self.unknown).append(n)
            assert status in (200, 504), status
            n += 1

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=WAIT * 2)


def test_kill_9_of_redis_mid_burst_three_times_stores_nothing_twice(
    bus_process: Start, redis_server: RedisServer
) -> None:
    bus = bus_process("--store", redis_server.url, "--history", "1000000", "--quiet")
    emitter = Emitter(bus.endpoints["ingest"], limit=150_000)
    poster = Poster(bus.url)
    try:
        for _ in range(3):
            wait_taken(bus, stored_so_far(bus) + 5000)  # mid-burst
            redis_server.kill()
            redis_server.start()
        report = emitter.finish(stop=False)
    finally:
        poster.stop()
        emitter.kill()
    check(bus, report)
    posted = [event["data"]["n"] for event in fetch_history(bus, types="http.tick", limit=1_000_000)]
    assert len(posted) == len(set(posted)), "an HTTP event answered 503 was stored, and stored again on retry"
    assert set(poster.answered) <= set(posted)
    assert set(posted) <= set(poster.answered) | set(poster.unknown)
    print(f"{report['emitted']} emitted over ZeroMQ, {len(posted)} over HTTP, {len(poster.unknown)} answered 504")
