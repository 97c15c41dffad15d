"""examples/node-publisher, as the README runs it: a Node.js publisher (npm zeromq + @msgpack/msgpack) loses nothing."""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
from readme import Addresses, commands, example, readme_example
from readme_shell import run, shell_env
from support import ROOT, BusProcess, wait_for_history

EXAMPLE = ROOT / "examples" / "node-publisher"
COUNT = 20_000
NPM_WAIT = 300.0  # `npm ci` from npm's cache: seconds, more on a busy machine


def require_npm() -> None:
    """Skip without node and npm, except in CI (`.ci/run` installs them)."""
    if shutil.which("node") and shutil.which("npm"):
        return
    message = "needs node and npm (Debian: apt-get install nodejs npm)"
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(message)
    pytest.skip(message)


@pytest.mark.timeout(2 * NPM_WAIT)
@readme_example("node-publisher", "node-connect")
def test_twenty_thousand_events_from_node_reach_the_bus_in_order(
    tmp_path: Path, bus_process: Callable[..., BusProcess]
) -> None:
    """The README's Node example failed with EAGAIN after ~3,000 events: at the high-water mark
    an XPUB with noDrop refuses the send, and zeromq.js does not wait; the example retries."""
    require_npm()
    # A copy of the example without its node_modules, as in a fresh clone.
    shutil.copytree(EXAMPLE, tmp_path / EXAMPLE.relative_to(ROOT), ignore=shutil.ignore_patterns("node_modules"))
    bus = bus_process("--quiet", "--history", str(COUNT + 10))
    env = shell_env(Addresses.of(bus))
    # One script: the `cd` holds for the line after it, as in a terminal.
    sent = run("\n".join(commands(example("node-publisher"))), env=env, cwd=tmp_path, timeout=NPM_WAIT)
    assert f"sent {COUNT} × node.tick" in sent.stderr
    events = wait_for_history(bus, COUNT, types="node.tick", within=60)
    assert [e["data"]["n"] for e in events] == list(range(COUNT))
    assert {e["source"] for e in events} == {"node"}

    block = example("node-connect").text
    script = block.splitlines()[0].removeprefix("// ")  # the block names its file
    (tmp_path / script).write_text(block)
    run(f"node {script}", env=env, cwd=tmp_path)
    [created] = wait_for_history(bus, 1, types="agent.created")
    assert (created["data"], created["source"]) == ({"id": 1}, "node")
