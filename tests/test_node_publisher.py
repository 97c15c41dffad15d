"""examples/node-publisher: a Node.js publisher (npm zeromq + @msgpack/msgpack) loses nothing."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Callable

import pytest
from support import ROOT, BusProcess, bus_env, wait_for_history

EXAMPLE = ROOT / "examples" / "node-publisher"
COUNT = 20_000


def node() -> str:
    """The node binary, with the example's packages installed; skip without them, except in CI."""
    found = shutil.which("node")
    if found and (EXAMPLE / "node_modules" / "zeromq").is_dir():
        return found
    message = f"needs node and `npm ci` in {EXAMPLE.relative_to(ROOT)}"
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(message)
    pytest.skip(message)


def test_twenty_thousand_events_from_node_reach_the_bus_in_order(bus_process: Callable[..., BusProcess]) -> None:
    """The README's Node example failed with EAGAIN after ~3,000 events: at the high-water mark
    an XPUB with noDrop refuses the send, and zeromq.js does not wait; the example retries."""
    binary = node()
    bus = bus_process("--quiet", "--history", str(COUNT))
    result = subprocess.run(
        [binary, "publish.js", str(COUNT), "node.tick"],
        cwd=EXAMPLE,
        env=bus_env(DEVBUS_INGEST=bus.endpoints["ingest"]),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    events = wait_for_history(bus, COUNT, types="node.tick", within=60)
    assert [e["data"]["n"] for e in events] == list(range(COUNT))
    assert {e["source"] for e in events} == {"node"}
