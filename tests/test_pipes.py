"""`listen`, `record -` and `watch` end within a second of their reader (`| head`, `| grep -m1`), on a quiet bus."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from support import ROOT, WAIT, BusProcess, bus_env

PROMPT_S = 1.0  # how long after its reader leaves a command may take to exit


@pytest.mark.parametrize(
    ("command", "reader", "events", "shown"),
    [
        (["listen"], ["head", "-n", "2"], ["agent.created", "agent.updated"], 2),
        (["listen", "--json"], ["grep", "-m1", "agent"], ["other.thing", "agent.created"], 1),
        (["record", "-"], ["head", "-n", "1"], ["agent.created"], 1),
        (["watch", "{dir}"], ["head", "-n", "2"], [], 2),
    ],
    ids=["listen|head", "listen-json|grep-m1", "record|head", "watch|head"],
)
def test_a_command_ends_within_a_second_of_its_reader_on_a_quiet_bus(
    bus_process: Callable[..., BusProcess],
    tmp_path: Path,
    command: list[str],
    reader: list[str],
    events: list[str],
    shown: int,
) -> None:
    """`devbus listen --json | head -n 2` hung on a quiet bus until the next event, which may never come."""
    bus = bus_process("--quiet")
    args = [arg.format(dir=tmp_path) for arg in command]
    env = bus_env(DEVBUS_URL=bus.url, DEVBUS_INGEST=bus.endpoints["ingest"])
    devbus = subprocess.Popen(
        [sys.executable, "-m", "devbus", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, cwd=ROOT
    )
    assert devbus.stdout is not None and devbus.stderr is not None
    try:
        piped = subprocess.Popen(reader, stdin=devbus.stdout, stdout=subprocess.PIPE, text=True)
        devbus.stdout.close()  # the reader holds the pipe alone, as in a shell pipeline
        with piped:
            if events:
                # "listening to …" / "recording …": the stream is connected, so nothing posted is missed.
                assert devbus.stderr.readline().decode().startswith(("listening to", "recording"))
                bus.post_batch([(event_type, {"n": n}) for n, event_type in enumerate(events)])
            lines, _ = piped.communicate(timeout=WAIT)
            left = time.monotonic()
        # The bus stays quiet from here on: nothing more is written to the closed pipe.
        assert devbus.wait(timeout=WAIT) == 0
        took = time.monotonic() - left
        errors = devbus.stderr.read().decode()
    finally:
        devbus.kill()
        devbus.wait(timeout=WAIT)
        devbus.stderr.close()
    assert len(lines.splitlines()) == shown, lines
    assert took < PROMPT_S, f"{args} took {took:.2f}s to see that {reader[0]} had exited"
    assert "Traceback" not in errors and "Error" not in errors, errors
