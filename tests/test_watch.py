"""`devbus watch`: real file changes in a temp dir become events on a real bus."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from click.testing import CliRunner
from support import ROOT, WAIT, BusProcess, SSEReader, bus_env

from devbus.cli import main

TYPE = "frontend.file_changed"

pytestmark = pytest.mark.timeout(60)


def start_watch(*args: str, env: dict[str, str]) -> BusProcess:
    """Start `devbus watch` and wait until it says it is ready."""
    command = [sys.executable, "-m", "devbus", "watch", *args]
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, cwd=ROOT)
    watcher = BusProcess(proc)
    threading.Thread(target=watcher._pump, daemon=True).start()
    watcher.wait_for_line(r"^ready")
    return watcher


@pytest.fixture
def watchers() -> Iterator[Callable[..., BusProcess]]:
    """Start watchers; every one is killed at the end of the test."""
    started: list[BusProcess] = []

    def factory(*args: str, env: dict[str, str]) -> BusProcess:
        started.append(start_watch(*args, env=env))
        return started[-1]

    yield factory
    for watcher in started:
        watcher.close()


class Events:
    """The bus's SSE stream, reduced to the watcher's events."""

    def __init__(self, reader: SSEReader) -> None:
        self.reader = reader

    async def next(self, count: int = 1) -> list[dict[str, Any]]:
        events: list[dict[str, Any]] = []
        while len(events) < count:
            event = json.loads((await self.reader.event())["data"])
            assert event["type"] == TYPE
            assert event["source"] == "watch"
            events.append(event["data"])
        return events


WatchedBus = tuple[BusProcess, Events, dict[str, str]]


@pytest.fixture
async def watched_bus(bus_process: Callable[..., BusProcess]) -> AsyncIterator[WatchedBus]:
    """A real bus, its stream of watcher events, and the environment that finds it."""
    bus = bus_process()
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"{bus.url}/api/dev/events", params={"types": TYPE}) as response,
    ):
        reader = SSEReader(response)
        assert '"connected"' in (await reader.event())["data"]
        yield bus, Events(reader), bus_env(DEVBUS_INGEST=bus.endpoints["ingest"])


async def test_changes_become_events(watched_bus: Any, watchers: Any, tmp_path: Path) -> None:
    _, events, env = watched_bus
    (tmp_path / "src" / "burst").mkdir(parents=True)
    watcher = watchers(str(tmp_path), "--ignore", "build", env=env)
    source = tmp_path / "src" / "app.ts"

    source.write_text("export {}")
    assert await events.next() == [{"file": "src/app.ts", "change": "added"}]
    source.write_text("export const x = 1")
    assert await events.next() == [{"file": "src/app.ts", "change": "modified"}]
    source.unlink()
    assert await events.next() == [{"file": "src/app.ts", "change": "deleted"}]

    for ignored in ("node_modules/react/index.js", ".git/HEAD", "build/out.js", "src/__pycache__/a.pyc"):
        (tmp_path / ignored).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / ignored).write_text("x")
    (tmp_path / "zz-marker.ts").write_text("x")
    # Ignored paths sort before the marker, so any event for them would come first.
    assert await events.next() == [{"file": "zz-marker.ts", "change": "added"}]

    names = [f"src/burst/file{i:03d}.tsx" for i in range(500)]
    for name in names:
        (tmp_path / name).write_text("x")
    received = await events.next(500)
    assert sorted(e["file"] for e in received) == names
    assert {e["change"] for e in received} == {"added"}

    watcher.proc.send_signal(signal.SIGINT)
    assert watcher.proc.wait(timeout=WAIT) == 0
    assert sum(" src/burst/file" in line for line in watcher.lines) == 500
    assert not [line for line in watcher.lines if "Traceback" in line]


async def test_batch_mode_and_globs(watched_bus: Any, watchers: Any, tmp_path: Path) -> None:
    _, events, env = watched_bus
    (tmp_path / "src" / "ui").mkdir(parents=True)
    watcher = watchers(str(tmp_path), "--batch", "--glob", "src/**/*.{ts,tsx},*.css", "--quiet", env=env)
    for i in range(300):
        (tmp_path / "src" / "ui" / f"c{i}.tsx").write_text("x")
        (tmp_path / "src" / "ui" / f"c{i}.js").write_text("not matched")
    (tmp_path / "site.css").write_text("x")

    changes: list[dict[str, str]] = []
    batches = 0
    while len(changes) < 301:
        [data] = await events.next()
        changes += data["changes"]
        batches += 1
    assert sorted(c["file"] for c in changes) == sorted([f"src/ui/c{i}.tsx" for i in range(300)] + ["site.css"])
    assert batches < 10, "a burst should arrive as one event (or a few, if the disk was slow)"
    watcher.proc.send_signal(signal.SIGTERM)
    assert watcher.proc.wait(timeout=WAIT) == 0
    assert watcher.lines[-1] == "ready (Ctrl-C to stop)", "--quiet prints no line per event"


def test_no_bus_is_one_clear_line(tmp_path: Path) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))  # nobody listens here
        address = f"tcp://127.0.0.1:{sock.getsockname()[1]}"
        result = CliRunner().invoke(main, ["watch", str(tmp_path), "--ingest", address, "--timeout", "0.5"])
    assert result.exit_code == 1
    assert address in result.stderr
    assert result.exception is None or isinstance(result.exception, SystemExit)
    assert len(result.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize(
    ("args", "field"),
    [(["--type", "has space"], "--type"), (["--source", ""], "--source"), (["--debounce-ms", "0"], "--debounce-ms")],
    ids=["type", "source", "debounce"],
)
def test_bad_options_name_the_field(tmp_path: Path, args: list[str], field: str) -> None:
    result = CliRunner().invoke(main, ["watch", str(tmp_path), *args])
    assert result.exit_code == 2
    assert field in result.stderr


def test_missing_path_is_refused(tmp_path: Path) -> None:
    result = CliRunner().invoke(main, ["watch", str(tmp_path / "missing")])
    assert result.exit_code == 2
    assert "missing" in result.stderr and "does not exist" in result.stderr


async def test_a_burst_interrupted_at_once_is_still_sent(watched_bus: Any, watchers: Any, tmp_path: Path) -> None:
    """Ctrl-C right after a 500-file burst sent none of it once in three tries."""
    _, events, env = watched_bus
    (tmp_path / "burst").mkdir()
    watcher = watchers(str(tmp_path), "--quiet", env=env)
    names = [f"burst/file{i:03d}.tsx" for i in range(500)]
    for name in names:
        (tmp_path / name).write_text("x")
    watcher.proc.send_signal(signal.SIGINT)
    assert watcher.proc.wait(timeout=WAIT) == 0
    received = await events.next(500)
    assert sorted(e["file"] for e in received) == names
