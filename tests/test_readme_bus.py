"""The README's bus examples, run as written: curl, `devbus run` options, the SQLite store, ipc:// endpoints."""

from __future__ import annotations

import json
import re
import stat
import tempfile
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import click
import pytest
from readme import Addresses, commands, example, free_addresses, localize, readme_example, shown
from readme_shell import Running, run, shell_env
from support import WAIT, BusProcess, RedisServer, free_port, wait_for_history, wait_until

import devbus
from devbus.cli.run import run as run_command

# Each test starts several processes (buses, commands, a compiler): minutes on a busy machine.
pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]


@readme_example("curl-stream", "curl-post", "curl-stream-frame", "run-console")
def test_two_curl_streams_see_the_posted_event_and_the_console_counts_them(
    tmp_path: Path, bus_process: Callable[..., BusProcess], background: Callable[..., Running]
) -> None:
    bus = bus_process()  # not --quiet: the console line is part of the example
    where = Addresses.of(bus)
    env = shell_env(where)
    [stream] = commands(example("curl-stream"))
    streams = [background(localize(stream, where), env=env, cwd=tmp_path) for _ in range(2)]
    for curl in streams:
        curl.wait_for(r'^data: \{"type":"connected","message":"SSE connected"')
    [post] = commands(example("curl-post"))
    answer = run(localize(post, where), env=env, cwd=tmp_path).stdout.strip()
    [said] = re.findall(r"^# (.*)$", example("curl-post").text, re.MULTILINE)
    assert shown(said).fullmatch(answer), answer
    frame = example("curl-stream-frame").text.splitlines()
    for curl in streams:
        for line in frame:
            curl.wait_for("^" + shown(line).pattern + "$")
    [console] = example("run-console").text.splitlines()
    bus.wait_for_line("^" + shown(console).pattern + "$")


def synopsis_options(text: str) -> dict[str, str | None]:
    """``--option`` → the value the synopsis shows for it (None for a flag)."""
    return {m.group(1): m.group(2) for m in re.finditer(r"\[(--[\w-]+)(?: ([^\]\s]+))?\]", text)}


@readme_example("run-options")
def test_the_devbus_run_synopsis_lists_every_option_with_its_default() -> None:
    listed = synopsis_options(example("run-options").text)
    params = {
        name: param
        for param in run_command.params
        if isinstance(param, click.Option)
        for name in param.opts
        if name.startswith("--") and name != "--help"
    }
    assert sorted(listed) == sorted(params)
    for name, value in listed.items():
        param = params[name]
        # --host and --port default to DEVBUS_URL's, and say so in show_default.
        default = param.show_default if isinstance(param.show_default, str) else param.default
        if param.multiple or param.is_flag or not isinstance(default, str | int | float) or value is None:
            continue  # a placeholder (`--token T`, `--forward URL`...) or a flag
        same = value == str(default) or (isinstance(default, float) and float(value) == default)
        assert same, f"{name}: the README shows {value}, devbus run's default is {default}"


@readme_example("run-sqlite")
def test_the_sqlite_store_keeps_events_and_ids_across_a_restart(
    tmp_path: Path, background: Callable[..., Running]
) -> None:
    [command] = commands(example("run-sqlite"))
    where = free_addresses()
    env = shell_env(where)
    missing = run(command, env=env, cwd=tmp_path, status=1)
    assert (
        missing.stderr
        == "Error: Cannot use --store sqlite:.devbus/events.db: directory '.devbus' does not exist; create it first\n"
    )
    (tmp_path / ".devbus").mkdir()  # as the comment says
    first = background(command, env=env, cwd=tmp_path)
    first.wait_for(r"^ready")
    [before] = where.post_batch([("note.saved", {"n": 1})])
    assert first.interrupt() == 0
    second = background(command, env=env, cwd=tmp_path)
    second.wait_for(r"^ready")
    [after] = where.post_batch([("note.saved", {"n": 2})])
    run_id, seq = before.rsplit("-", 1)
    assert after == f"{run_id}-{int(seq) + 1}"
    with urllib.request.urlopen(f"{where.url}/api/dev/history", timeout=WAIT) as reply:
        assert [e["data"] for e in json.load(reply)["events"]] == [{"n": 1}, {"n": 2}]
    assert second.interrupt() == 0


@pytest.fixture
def runtime_dir() -> Iterator[Path]:
    """A short private directory for $XDG_RUNTIME_DIR: a socket path must fit in 107 bytes."""
    with tempfile.TemporaryDirectory(prefix="devbus-", dir="/tmp") as directory:
        yield Path(directory)


@readme_example("ipc")
def test_ipc_endpoints_in_a_private_directory(runtime_dir: Path, background: Callable[..., Running]) -> None:
    where = free_addresses()
    env = shell_env(where, XDG_RUNTIME_DIR=str(runtime_dir))
    del env["DEVBUS_INGEST"], env["DEVBUS_EGRESS"]  # the block exports its own
    # One script: its `export` sets what the `devbus run` after it reads.
    bus = background("\n".join(commands(example("ipc"))), env=env, cwd=runtime_dir)
    ingest = f"ipc://{runtime_dir}/devbus/in"
    bus.wait_for(rf"^  ingest\s+{re.escape(ingest)}$")
    bus.wait_for(r"^ready")
    assert stat.S_IMODE((runtime_dir / "devbus").stat().st_mode) == 0o700
    with devbus.Publisher(ingest=ingest) as publisher:
        publisher.emit("over.ipc", {"private": True})
    events = wait_for_history(where.url, 1)
    assert [(e["type"], e["data"]) for e in events] == [("over.ipc", {"private": True})]


def metric(url: str, name: str) -> float:
    """The value of the one sample of ``name`` in the bus's /metrics (0 if it has none yet)."""
    with urllib.request.urlopen(f"{url}/metrics", timeout=WAIT) as reply:
        samples = [line.split()[-1] for line in reply.read().decode().splitlines() if line.startswith(name)]
    return float(samples[0]) if samples else 0.0


@readme_example("forward-run", "forward-backend", "forward-backend-run")
def test_the_backend_gets_each_forwarded_order_and_never_its_own_confirmation(
    tmp_path: Path, background: Callable[..., Running]
) -> None:
    """The README never said that the backend needs httpx: it failed with ModuleNotFoundError."""
    where = free_addresses()
    env = shell_env(where)
    port = str(free_port())  # the backend's, for the README's 8000
    (tmp_path / "app.py").write_text(localize(example("forward-backend").text, where))
    install, serve = commands(example("forward-backend-run"))
    # This venv has them (devbus's [test] extra): pip finds them installed and changes nothing.
    assert "Requirement already satisfied: httpx" in run(install, env=env, cwd=tmp_path, timeout=120).stdout
    backend = background(serve.replace("8000", port), env=env, cwd=tmp_path)
    backend.wait_for(r"Uvicorn running on http://127\.0\.0\.1:\d+")
    [forward] = commands(example("forward-run"))
    bus = background(localize(forward, where, **{"127.0.0.1:8000": f"127.0.0.1:{port}"}), env=env, cwd=tmp_path)
    bus.wait_for(rf"^  forward\s+http://127\.0\.0\.1:{port}/dev/events  \(types: agent\.\*,order\.\*\)$")
    bus.wait_for(r"^ready")
    where.post_batch([("other.thing", {}), ("order.placed", {"order": 7})])
    [confirmed] = wait_for_history(where.url, 1, types="order.confirmed")
    assert confirmed["source"] == f"127.0.0.1:{port}"
    # The confirmation is skipped for the backend that sent it; only the order reached it. The
    # order counts as forwarded once the backend has answered, after it sent the confirmation.
    wait_until(
        lambda: (
            metric(where.url, "devbus_forward_skipped_total{") >= 1
            and metric(where.url, "devbus_forwarded_total{") >= 1
        ),
        what="the order forwarded and the confirmation skipped",
    )
    assert metric(where.url, "devbus_forwarded_total{") == 1
    assert metric(where.url, "devbus_forward_skipped_total{") == 1
    assert len([line for line in backend.lines if '"POST /dev/events HTTP/1.1" 200' in line]) == 1


@readme_example("redis-run")
def test_buses_on_one_redis_share_a_stream_per_store_key(
    tmp_path: Path, redis_server: RedisServer, background: Callable[..., Running]
) -> None:
    install, shared, team = commands(example("redis-run"))
    # This venv has devbus with its [redis] extra: pip finds it installed and changes nothing.
    assert "Requirement already satisfied: devbus[redis]" in run(install, env=shell_env(), cwd=tmp_path).stdout
    store = {"redis://127.0.0.1:6379/0": redis_server.url}
    buses = {key: (free_addresses(), command) for key, command in (("devbus", shared), ("team-a", team))}
    for key, (where, command) in buses.items():
        bus = background(localize(command, where, **store), env=shell_env(where), cwd=tmp_path)
        bus.wait_for(r"^ready")
        where.post_batch([("hello.from", {"key": key})])
    for key, (where, _) in buses.items():
        [event] = wait_for_history(where.url, 1)
        assert event["data"] == {"key": key}
        with urllib.request.urlopen(f"{where.url}/api/dev/health", timeout=WAIT) as reply:
            store_status = json.load(reply)["store"]
        assert (store_status["name"], store_status["key"], store_status["state"]) == (redis_server.url, key, "up")
