"""`devbus run` as a real process: banner, events end to end, clean stop."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Callable
from typing import Any

import pytest
from click.testing import CliRunner
from support import BusProcess

from devbus.cli import main


def post(url: str, body: dict[str, Any]) -> dict[str, Any]:
    request = urllib.request.Request(
        url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}, method="POST"
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        result: dict[str, Any] = json.load(response)
        return result


def test_run_serves_posts_streams_and_stops_on_sigterm(bus_process: Callable[..., BusProcess]) -> None:
    bus = bus_process()
    with urllib.request.urlopen(f"{bus.url}/api/dev/events", timeout=10) as stream:
        assert stream.readline() == b"retry: 1000\n"
        assert json.loads(stream.readline().removeprefix(b"data: "))["type"] == "connected"
        assert stream.readline() == b"\n"
        sent = post(f"{bus.url}/api/dev/webhook", {"event_type": "test.event", "data": {"message": "Hello"}})
        assert sent["subscribers"] == 1
        assert stream.readline() == f"id: {sent['id']}\n".encode()
        event = json.loads(stream.readline().removeprefix(b"data: "))
        assert event["data"] == {"message": "Hello"}
        bus.wait_for_line(r"test\.event\s+http\s+\S+\s+→ 1 subscriber$")
        assert bus.stop(timeout=5) == 0
        # The stream ends cleanly instead of hanging on a dead bus.
        assert stream.read() == b"\n"


def test_run_reads_environment_variables(bus_process: Callable[..., BusProcess]) -> None:
    from support import bus_env

    bus = bus_process(env=bus_env(DEVBUS_PREFIX="/bus", DEVBUS_QUIET="1"))
    assert post(f"{bus.url}/bus/trigger", {"event_type": "x"})["success"] is True
    assert bus.stop(timeout=5) == 0
    assert not any("→" in line for line in bus.lines)


def test_run_refuses_a_public_bind_without_token(bus_process: Callable[..., BusProcess]) -> None:
    import subprocess
    import sys

    from support import ROOT, bus_env

    result = subprocess.run(
        [sys.executable, "-m", "devbus", "run", "--host", "0.0.0.0", "--port", "0"],
        capture_output=True,
        text=True,
        env=bus_env(),
        cwd=ROOT,
        timeout=30,
    )
    assert result.returncode != 0
    assert "--token" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize(
    ("option", "value", "message"),
    [
        ("--egress-buffer", "lots", "512k or 1MiB"),
        ("--max-body", "lots", "512k or 1MiB"),
        ("--max-subscribers", "-1", "--max-subscribers"),
    ],
    ids=["egress-buffer-not-a-size", "max-body-not-a-size", "negative-subscribers"],
)
def test_run_names_the_option_a_bad_bound_came_from(option: str, value: str, message: str) -> None:
    result = CliRunner().invoke(main, ["run", option, value])
    assert result.exit_code == 2
    assert message in result.output
    assert "Traceback" not in result.output


def test_run_takes_sizes_with_units(bus_process: Callable[..., BusProcess]) -> None:
    """A size with a unit parses: --max-body 1k refuses a 2 KiB body."""
    bus = bus_process("--max-body", "1k", "--quiet")
    body = json.dumps({"event_type": "big", "data": {"blob": "x" * 2048}}).encode()
    request = urllib.request.Request(
        f"{bus.url}/api/dev/webhook", data=body, headers={"Content-Type": "application/json"}, method="POST"
    )
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(request, timeout=10)
    with refused.value:
        assert refused.value.code == 413
        assert "1024 bytes" in json.load(refused.value)["error"]
