"""`devbus run` as a real process: banner, events end to end, clean stop."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Callable

import pytest
from click.testing import CliRunner
from support import BusProcess, bus_env, run_devbus

from devbus.cli import main


def test_run_serves_posts_streams_and_stops_on_sigterm(bus_process: Callable[..., BusProcess]) -> None:
    bus = bus_process()
    with urllib.request.urlopen(f"{bus.url}/api/dev/events", timeout=10) as stream:
        assert stream.readline() == b"retry: 1000\n"
        assert json.loads(stream.readline().removeprefix(b"data: "))["type"] == "connected"
        assert stream.readline() == b"\n"
        sent = bus.request("POST", "/api/dev/webhook", {"event_type": "test.event", "data": {"message": "Hello"}})
        assert sent["subscribers"] == 1
        assert stream.readline() == f"id: {sent['id']}\n".encode()
        event = json.loads(stream.readline().removeprefix(b"data: "))
        assert event["data"] == {"message": "Hello"}
        bus.wait_for_line(r"test\.event\s+http\s+\S+\s+→ 1 subscriber$")
        assert bus.stop(timeout=5) == 0
        # The stream ends cleanly instead of hanging on a dead bus.
        assert stream.read() == b"\n"


def test_run_reads_environment_variables(bus_process: Callable[..., BusProcess]) -> None:
    bus = bus_process(env=bus_env(DEVBUS_PREFIX="/bus", DEVBUS_QUIET="1", DEVBUS_RETRY="250"))
    assert bus.request("POST", "/bus/trigger", {"event_type": "x"})["success"] is True
    with urllib.request.urlopen(f"{bus.url}/bus/events", timeout=10) as stream:
        assert stream.readline() == b"retry: 250\n"
    assert bus.stop(timeout=5) == 0
    assert not any("→" in line for line in bus.lines)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--prefix", "api/dev"], "--prefix 'api/dev' must start with '/': write /api/dev"),
        (["--port", "70000"], "70000 is not in the range 0<=x<=65535"),
        (["--ingest", "9101"], "--ingest '9101' is not a ZeroMQ endpoint: write tcp://127.0.0.1:9101"),
        (
            ["--egress", "127.0.0.1:9102"],
            "--egress '127.0.0.1:9102' is not a ZeroMQ endpoint: write tcp://127.0.0.1:9102",
        ),
        (["--memory-budget", "64k"], "--memory-budget 65536 bytes is too small: give connections at least 1MiB"),
    ],
    ids=["prefix-without-slash", "port-out-of-range", "ingest-without-tcp", "egress-without-tcp", "tiny-budget"],
)
def test_run_refuses_a_malformed_option_before_binding_in_one_line(args: list[str], message: str) -> None:
    result = run_devbus("run", "--port", "0", *args)
    assert result.returncode != 0
    assert message in result.stderr
    assert result.stdout == "" and "Traceback" not in result.stderr


def test_a_second_run_says_a_devbus_is_already_running_and_names_every_conflict(
    bus_process: Callable[..., BusProcess],
) -> None:
    first = bus_process("--quiet")
    port = first.url.rsplit(":", 1)[1]
    same = ["--port", port, "--ingest", first.endpoints["ingest"], "--egress", first.endpoints["egress"]]
    second = run_devbus("run", *same)
    assert second.returncode == 1
    [line] = second.stderr.strip().splitlines()
    assert line.startswith(f"Error: a devbus is already running at {first.url} (devbus ")
    for address in (f"HTTP 127.0.0.1:{port}", f"ingest {first.endpoints['ingest']}", first.endpoints["egress"]):
        assert address in line
    assert "--port 0 --ingest 'tcp://127.0.0.1:*' --egress 'tcp://127.0.0.1:*'" in line


def test_the_banner_shows_forward_targets_without_secrets_and_columns_stay_aligned(
    bus_process: Callable[..., BusProcess],
) -> None:
    bus = bus_process("--forward", "http://user:pw@127.0.0.1:9/hook?token=s3cret", "--forward-types", "agent.*")
    assert bus.wait_for_line(r"^  forward +(.*)$").group(1) == "http://127.0.0.1:9/hook?…  (types: agent.*)"
    for source in ("a-much-longer-source", "http", "seed"):
        bus.request("POST", "/api/dev/trigger", {"event_type": "col.check", "source": source})
    lines = [bus.wait_for_line(rf"col\.check\s+{source} .*→").group(0) for source in ("http", "seed")]
    columns = [line.index("→") for line in lines]
    assert columns[0] == columns[1]
    assert not any("s3cret" in line or "pw@" in line for line in bus.lines)


def test_the_banner_shows_a_named_forward_target_by_its_name(bus_process: Callable[..., BusProcess]) -> None:
    """`--forward NAME=URL` was shown as `://backend=http://…`: the name was read as part of the URL."""
    bus = bus_process("--forward", "backend=http://127.0.0.1:9/hook?token=s3cret")
    assert bus.wait_for_line(r"^  forward +(.*)$").group(1) == "backend=http://127.0.0.1:9/hook?…"


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
