"""Test helpers: SSE frame reading, real `devbus run` processes, raw ZeroMQ senders, redis-server."""

from __future__ import annotations

import asyncio
import json
import os
import re
import resource
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.parse
import urllib.request
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeAlias

import aiohttp
import pytest
import zmq
import zmq.asyncio
from aiohttp import web
from aiohttp.test_utils import TestClient

from devbus.bus.keys import DISPATCHER

ROOT = Path(__file__).resolve().parent.parent
WAIT = 10.0  # seconds any single wait in a test may take before it fails
# Seconds a `devbus run` may take to print its banner: imports alone take seconds on a loaded machine.
STARTUP = 30.0


class SSEReader:
    """Read an SSE response frame by frame, keeping the exact bytes seen."""

    def __init__(self, response: aiohttp.ClientResponse) -> None:
        self.response = response
        self.raw = b""
        self._buffer = b""

    async def frame(self, *, within: float = WAIT) -> bytes:
        """Return the next frame (without its blank-line terminator), heartbeats included."""
        async with asyncio.timeout(within):
            while (not self._buffer.startswith(b":") and b"\n\n" not in self._buffer) or b"\n" not in self._buffer:
                chunk = await self.response.content.readany()
                if not chunk:
                    raise EOFError("stream ended")
                self.raw += chunk
                self._buffer += chunk
        if self._buffer.startswith(b":"):
            # A heartbeat is one comment line, with no blank line after it.
            comment, _, self._buffer = self._buffer.partition(b"\n")
            return comment
        frame, _, self._buffer = self._buffer.partition(b"\n\n")
        return frame

    async def event(self, *, within: float = WAIT) -> dict[str, str]:
        """Return the next non-comment frame as a field → value mapping."""
        while True:
            frame = await self.frame(within=within)
            fields = {}
            for line in frame.decode().split("\n"):
                if line.startswith(":"):
                    continue
                name, _, value = line.partition(": ")
                fields[name] = value
            if fields:
                return fields


Client: TypeAlias = TestClient[Any, Any]
BusFactory: TypeAlias = Callable[..., Awaitable[Client]]


def wait_until(condition: Callable[[], bool], *, within: float = WAIT, what: str = "the condition") -> float:
    """Poll ``condition`` until it holds; return how long that took; fail after ``within`` seconds."""
    started = time.monotonic()
    while not condition():
        if time.monotonic() - started > within:
            raise AssertionError(f"not within {within:g} s: {what}")
        time.sleep(0.02)  # polling a condition of another process, bounded by ``within``
    return time.monotonic() - started


async def post(client: Client, event_type: str, data: dict[str, Any] | None = None, **fields: Any) -> dict[str, Any]:
    """POST one webhook event (``fields`` such as ``source`` go beside ``data``); return the bus's answer."""
    response = await client.post("/api/dev/webhook", json={"event_type": event_type, "data": data or {}, **fields})
    assert response.status == 200, await response.text()
    answer: dict[str, Any] = await response.json()
    return answer


async def post_batch(client: Client, events: list[tuple[str, dict[str, Any]]]) -> list[str]:
    """POST ``(type, data)`` pairs as one batch; return their ids."""
    body = {"events": [{"event_type": t, "data": d} for t, d in events]}
    response = await client.post("/api/dev/batch", json=body)
    assert response.status == 200, await response.text()
    ids: list[str] = (await response.json())["ids"]
    return ids


async def open_stream(client: Client, path: str = "/api/dev/events", **kwargs: Any) -> SSEReader:
    """Open an SSE stream and consume its connected frame."""
    response = await client.get(path, **kwargs)
    assert response.status == 200, await response.text()
    reader = SSEReader(response)
    connected = await reader.event()
    assert '"type":"connected"' in connected["data"]
    return reader


@dataclass
class BusProcess:
    """A real `devbus run` child process and the addresses it printed."""

    proc: subprocess.Popen[str]
    url: str = ""
    endpoints: dict[str, str] = field(default_factory=dict)
    lines: list[str] = field(default_factory=list)
    _seen: threading.Condition = field(default_factory=threading.Condition)

    def _pump(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            with self._seen:
                self.lines.append(line.rstrip("\n"))
                self._seen.notify_all()
        with self._seen:
            self._seen.notify_all()

    def wait_for_line(self, pattern: str, *, timeout: float = WAIT) -> re.Match[str]:
        """Wait until the bus prints a line matching ``pattern``."""
        regex = re.compile(pattern)

        def find() -> re.Match[str] | None:
            return next((m for line in self.lines if (m := regex.search(line)) is not None), None)

        with self._seen:
            self._seen.wait_for(lambda: find() is not None or self.proc.poll() is not None, timeout)
            match = find()
        if match is None:
            raise AssertionError(f"no line matching {pattern!r}; printed so far: {self.lines}")
        return match

    def close(self) -> None:
        """Kill the process if it still runs and release its pipe."""
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(timeout=WAIT)
        if self.proc.stdout is not None:
            self.proc.stdout.close()

    def stop(self, *, timeout: float = WAIT) -> int:
        """Send SIGTERM and return the exit code."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout=timeout)

    def request(self, method: str, path: str, body: Any = None) -> Any:
        """Send one JSON request to the bus and return the decoded answer (it must be a 200)."""
        data = None if body is None else json.dumps(body).encode()
        headers = {"Content-Type": "application/json"} if data is not None else {}
        call = urllib.request.Request(self.url + path, data=data, headers=headers, method=method)
        with urllib.request.urlopen(call, timeout=WAIT * 3) as response:
            assert response.status == 200
            return json.load(response)

    def post_batch(self, events: list[tuple[str, dict[str, Any]]]) -> list[str]:
        """POST ``(type, data)`` pairs as one batch; return their ids in order."""
        body = {"events": [{"event_type": t, "data": d} for t, d in events]}
        ids: list[str] = self.request("POST", "/api/dev/batch", body)["ids"]
        assert len(ids) == len(events)
        return ids

    def health(self) -> dict[str, Any]:
        """The bus's /health answer."""
        answer: dict[str, Any] = self.request("GET", "/api/dev/health")
        return answer


def fetch_history(bus: BusProcess | str, *, types: str = "", limit: int = 10_000) -> list[dict[str, Any]]:
    """The events a real bus (or the bus at a URL) retains, oldest first."""
    query = urllib.parse.urlencode({"limit": limit, **({"types": types} if types else {})})
    url = bus if isinstance(bus, str) else bus.url
    with urllib.request.urlopen(f"{url}/api/dev/history?{query}", timeout=WAIT) as reply:
        events: list[dict[str, Any]] = json.load(reply)["events"]
        return events


def wait_for_history(
    bus: BusProcess | str, count: int, *, types: str = "", within: float = WAIT
) -> list[dict[str, Any]]:
    """Wait until a real bus retains ``count`` events (of ``types``), then return them.

    What a sender hands to ZeroMQ reaches the bus a moment later, more so on a busy machine.
    """
    deadline = time.monotonic() + within
    while len(events := fetch_history(bus, types=types, limit=max(count, 10_000))) < count:
        assert time.monotonic() < deadline, f"the bus has {len(events)} of {count} events"
        time.sleep(0.02)
    return events


def bus_env(**extra: str) -> dict[str, str]:
    """The environment for a child process that should import this checkout."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("DEVBUS_")}
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra)
    return env


def bus_env_running_first(directory: Path, code: str) -> dict[str, str]:
    """The environment of a child that runs ``code`` before anything else (as ``sitecustomize``).

    For what no option sets: a fault injected into a bus, or a limit set on it from inside.
    """
    (directory / "sitecustomize.py").write_text(code)
    return bus_env(PYTHONPATH=f"{directory}{os.pathsep}{ROOT}")


def run_devbus(
    *args: str, env: dict[str, str] | None = None, timeout: float = WAIT * 3
) -> subprocess.CompletedProcess[str]:
    """Run `devbus ARGS...` from this checkout to its end; return what it printed (text) and its exit code."""
    return subprocess.run(
        [sys.executable, "-m", "devbus", *args],
        capture_output=True,
        text=True,
        env=env or bus_env(),
        cwd=ROOT,
        timeout=timeout,
    )


def start_bus(*args: str, env: dict[str, str] | None = None, open_files: int | None = None) -> BusProcess:
    """Start `devbus run` on free loopback ports and wait for its banner.

    ``open_files`` sets the child's open-file limit (soft and hard), as a small machine would.
    """
    command = [
        sys.executable,
        "-m",
        "devbus",
        "run",
        "--port",
        "0",
        "--ingest",
        "tcp://127.0.0.1:*",
        "--egress",
        "tcp://127.0.0.1:*",
        *args,
    ]

    def limit_files() -> None:
        if open_files is not None:
            resource.setrlimit(resource.RLIMIT_NOFILE, (open_files, open_files))

    proc = subprocess.Popen(
        command,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env or bus_env(),
        cwd=ROOT,
        preexec_fn=limit_files if open_files is not None else None,
    )
    bus = BusProcess(proc)
    threading.Thread(target=bus._pump, daemon=True).start()
    try:
        bus.wait_for_line(r"^ready", timeout=STARTUP)
    except BaseException:
        bus.close()  # a bus that never said ready must not outlive the test
        raise
    bus.url = bus.wait_for_line(r"^devbus \S+ on (http://\S+)").group(1)
    for line in bus.lines:
        if (row := re.match(r"^  (\w+)\s+(\S+)", line)) is not None:
            bus.endpoints[row.group(1)] = row.group(2)
    return bus


async def connect_sender(context: zmq.asyncio.Context, endpoint: str) -> zmq.asyncio.Socket:
    """A raw XPUB connected to the ingest, returned once the bus has subscribed.

    XPUB_NODROP, as the Publisher sets it: at the high-water mark a send waits instead of
    dropping, which a loaded machine reaches (a burst test lost events without it).
    """
    sender = context.socket(zmq.XPUB)
    sender.setsockopt(zmq.XPUB_NODROP, 1)
    sender.connect(endpoint)
    async with asyncio.timeout(WAIT):
        assert await sender.recv() == b"\x01"
    return sender


async def send_waiting(sender: zmq.asyncio.Socket, frames: list[bytes]) -> None:
    """Send one message; at the high-water mark wait for room and retry, as the Publisher does.

    With XPUB_NODROP a full queue refuses the send (EAGAIN), and pyzmq's asyncio send does
    not wait for room: an XPUB always reports POLLOUT.
    """
    while True:
        try:
            await sender.send_multipart(frames, copy=False)
            return
        except zmq.Again:
            await asyncio.sleep(0.001)


async def eventually(check: Callable[[], Awaitable[bool]], *, within: float = WAIT) -> None:
    """Poll ``check`` until it holds, failing after ``within`` seconds."""
    async with asyncio.timeout(within):
        while not await check():  # noqa: ASYNC110 - an HTTP endpoint offers nothing to await
            await asyncio.sleep(0.02)


async def wait_for_total(client: Client, count: int, *, within: float = WAIT) -> None:
    """Return once the bus has accepted ``count`` events in all; fail after ``within`` seconds."""
    dispatcher = client.app[DISPATCHER]
    reached = asyncio.Event()

    def check(_: object) -> None:
        if dispatcher.total >= count:
            reached.set()

    remove = dispatcher.add_output(check)
    try:
        check(None)
        async with asyncio.timeout(within):
            await reached.wait()
    finally:
        remove()


async def history(client: Client, *, count: int, token: str | None = None) -> list[dict[str, Any]]:
    """Wait until the bus has ``count`` events, then return its history (up to 10,000)."""
    await wait_for_total(client, count)
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    response = await client.get("/api/dev/history", params={"limit": "10000"}, headers=headers)
    assert response.status == 200, await response.text()
    events: list[dict[str, Any]] = (await response.json())["events"]
    return events


def rss(pid: int) -> int:
    """Resident memory of process ``pid`` in bytes (VmRSS from /proc)."""
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmRSS for process {pid}")


def address(url: str) -> tuple[str, int]:
    """(host, port) of an http:// URL printed by the bus."""
    host, _, port = url.removeprefix("http://").partition(":")
    return host, int(port)


def require_file(path: Path, message: str) -> None:
    """Skip the test without ``path``, except in CI (CI=true), where it is a failure."""
    if path.exists():
        return
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(message)
    pytest.skip(message)


def assert_agent_types(typescript: str) -> None:
    """Check `devbus types --ts` output for the types scripts/bulk_create_agents.py sends."""
    fields = "  bulk: boolean;\n  created_at: string;\n  id: string;\n  name: string;\n"
    assert "export interface AgentCreatedData {\n" + fields + "}" in typescript
    assert "export interface AgentsBulkCreatedData {\n  agent_ids: string[];\n  count: number;\n}" in typescript
    assert '  | DevbusEventOf<"agent.created">\n  | DevbusEventOf<"agents.bulk_created">' in typescript
    assert '"agents.bulk_created": AgentsBulkCreatedData;' in typescript


def devbus_cli(bus: BusProcess, *args: str, stdin: str | None = None) -> Any:
    """Run a `devbus` client command against ``bus`` in this process; return click's Result."""
    from click.testing import CliRunner

    from devbus.cli import main

    env = {"DEVBUS_URL": bus.url, "DEVBUS_INGEST": bus.endpoints.get("ingest", ""), "DEVBUS_TOKEN": ""}
    return CliRunner().invoke(main, list(args), input=stdin, env=env, catch_exceptions=False)


def start_recorder(bus: BusProcess, path: Path, *args: str) -> subprocess.Popen[str]:
    """Start `devbus record PATH` against ``bus``; return once its stream is connected."""
    before = bus.health()["subscribers"]
    proc = subprocess.Popen(
        [sys.executable, "-m", "devbus", "record", str(path), *args],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        env=bus_env(DEVBUS_URL=bus.url),
        cwd=ROOT,
    )
    deadline = time.monotonic() + WAIT
    while bus.health()["subscribers"] <= before:
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            _, errors = proc.communicate(timeout=WAIT)
            raise AssertionError(f"devbus record did not connect: {errors}")
        time.sleep(0.05)  # polling the condition above, with the deadline as the timeout
    return proc


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


@dataclass
class RedisServer:
    """A real redis-server on 127.0.0.1 with its files in ``directory``; restartable on the same port.

    With ``appendonly`` every write is in the AOF, fsynced before Redis answers
    (``--appendfsync always``), so a restart keeps everything a client was told
    was written.
    """

    directory: Path
    appendonly: bool = True
    port: int = 0
    proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """The store URL that reaches this server."""
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def log(self) -> str:
        """What redis-server logged so far."""
        path = self.directory / "redis.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def start(self, *, timeout: float = WAIT) -> None:
        """Start the server (on a free port the first time, the same port after) and wait until it answers."""
        assert self.proc is None or self.proc.poll() is not None, "already running"
        self.port = self.port or free_port()
        aof = ["--appendonly", "yes", "--appendfsync", "always"] if self.appendonly else ["--appendonly", "no"]
        command = ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.directory)]
        command += ["--save", "", "--daemonize", "no", "--logfile", "redis.log", *aof]
        self.proc = subprocess.Popen(command, cwd=self.directory, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while not self.ping():
            if self.proc.poll() is not None:
                raise AssertionError(f"redis-server exited with {self.proc.returncode}:\n{self.log}")
            if time.monotonic() > deadline:
                raise AssertionError(f"redis-server did not answer within {timeout}s:\n{self.log}")
            time.sleep(0.02)  # polling a child process that has no readiness signal

    def ping(self) -> bool:
        """Whether the server answers PING with PONG (not while it loads its AOF)."""
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=1) as conn:
                conn.sendall(b"PING\r\n")
                return conn.recv(64).startswith(b"+PONG")
        except OSError:
            return False

    def kill(self) -> None:
        """Kill the server at once (SIGKILL): what is not in the AOF is gone."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
        if self.proc is not None:
            self.proc.wait(timeout=WAIT)

    def restart(self) -> None:
        """Kill the server and start it again on the same port and directory."""
        self.kill()
        self.start()


def start_redis(directory: Path, *, appendonly: bool = True) -> RedisServer:
    """Start a redis-server in ``directory``; skip without one, except in CI where that fails."""
    if shutil.which("redis-server") is None:
        message = "redis-server is not installed (Debian: apt-get install redis-server)"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(message)
        pytest.skip(message)
    server = RedisServer(directory, appendonly=appendonly)
    server.start()
    return server


Handler = Callable[[web.Request, dict[str, Any]], Awaitable[None]]


class Receiver:
    """A backend on 127.0.0.1 that records what the bus POSTs to it."""

    def __init__(self, port: int, *, statuses: list[int] | None = None, on_event: Handler | None = None) -> None:
        self.port = port
        self.url = f"http://127.0.0.1:{port}/hook"
        self.statuses = list(statuses or [])  # answers for the first requests, 200 after
        self.on_event = on_event
        self.attempts: list[dict[str, Any]] = []
        self.accepted: list[dict[str, Any]] = []
        self.headers: list[dict[str, str]] = []
        self._changed = asyncio.Condition()
        self._runner: web.AppRunner | None = None

    async def _handle(self, request: web.Request) -> web.Response:
        event = json.loads(await request.read())
        status = self.statuses.pop(0) if self.statuses else 200
        async with self._changed:
            self.attempts.append(event)
            if status == 200:
                self.accepted.append(event)
                self.headers.append(dict(request.headers))
            self._changed.notify_all()
        if status == 200 and self.on_event is not None:
            await self.on_event(request, event)
        return web.json_response({"ok": status == 200}, status=status)

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/hook", self._handle)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port).start()

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def wait_accepted(self, count: int, *, within: float = WAIT) -> list[str]:
        """Wait until ``count`` events were accepted; return their types in arrival order."""
        async with asyncio.timeout(within), self._changed:
            await self._changed.wait_for(lambda: len(self.accepted) >= count)
        return [event["type"] for event in self.accepted]
