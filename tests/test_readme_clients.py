"""The README's Python client examples, run as scripts: a publishing script and a subscriber."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import pytest
from readme import Addresses, example, readme_example
from readme_shell import Running, run, shell_env
from support import WAIT, BusProcess, free_port, wait_for_history

# Each test starts several processes (buses, commands, a compiler): minutes on a busy machine.
pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]


@readme_example("python-script")
def test_the_plain_script_delivers_everything_in_order_and_says_what_it_could_not_without_a_bus(
    tmp_path: Path, bus_process: Callable[..., BusProcess]
) -> None:
    (tmp_path / "script.py").write_text(example("python-script").text)
    bus = bus_process("--quiet")
    done = run("python script.py", env=shell_env(Addresses.of(bus)), cwd=tmp_path)
    assert done.stderr == ""
    rows = wait_for_history(bus, 1200, types="row.imported")
    assert [(e["data"]["id"], e["source"]) for e in rows] == [(n, "importer") for n in range(1, 1201)]
    [finished] = wait_for_history(bus, 1, types="import.finished")
    assert finished["data"] == {"rows": 1200}

    nowhere = f"tcp://127.0.0.1:{free_port()}"
    started = time.monotonic()
    alone = run("python script.py", env=shell_env(DEVBUS_INGEST=nowhere), cwd=tmp_path)
    assert time.monotonic() - started < WAIT / 2
    hint = f"no devbus at {nowhere}; start one with `devbus run`, or point DEVBUS_INGEST at it"
    assert alone.stderr.splitlines() == [f"1200 events not delivered: {hint}", f"1 event not delivered: {hint}"]


@readme_example("python-subscriber")
def test_the_subscriber_prints_the_types_it_asked_for(
    tmp_path: Path, bus_process: Callable[..., BusProcess], background: Callable[..., Running]
) -> None:
    (tmp_path / "subscriber.py").write_text(example("python-subscriber").text)
    bus = bus_process("--quiet")
    subscriber = background("python subscriber.py", env=shell_env(Addresses.of(bus)), cwd=tmp_path)
    # Its subscription reaches the bus a moment after it starts: probe until one event is through.
    deadline = time.monotonic() + WAIT
    probes = 0
    while not any("agent.probe" in line for line in subscriber.lines):
        assert time.monotonic() < deadline, subscriber.lines
        bus.post_batch([("agent.probe", {"n": probes})])
        probes += 1
        time.sleep(0.05)  # the probe's pace; the loop waits for the condition above
    ids = bus.post_batch([("rental.created", {"n": 1}), ("other.thing", {}), ("agent.updated", {"n": 2})])
    subscriber.wait_for(rf"^{ids[2]} agent\.updated \{{'n': 2\}}$")
    assert f"{ids[0]} rental.created {{'n': 1}}" in subscriber.lines
    assert not [line for line in subscriber.lines if "other.thing" in line]
