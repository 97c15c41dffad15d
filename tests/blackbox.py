"""Black-box probes of a real `devbus run` process: HTTP calls, raw stalled sockets, its memory and sockets.

Everything here looks at the bus from the outside, as a user or an operator would:
HTTP requests, SSE streams read line by line, sockets that never read, and the
bus process's memory and open sockets as Linux reports them in /proc.
"""

from __future__ import annotations

import contextlib
import json
import socket
import time
import urllib.request
from collections.abc import Iterator
from typing import Any

# The benchmark's probes of a process (memory, CPU, sockets from /proc) serve the tests too.
from loadgen import Probe
from support import WAIT, BusProcess

MIB = 1024 * 1024


# ---------------------------------------------------------------- HTTP


def post_event(bus: BusProcess, event_type: str, data: dict[str, Any]) -> str:
    """POST one webhook event; return the id the bus acknowledged it with."""
    answer = bus.request("POST", "/api/dev/webhook", {"event_type": event_type, "data": data})
    assert answer["success"] is True
    event_id: str = answer["id"]
    return event_id


def fill_history(bus: BusProcess, total_bytes: int, *, event_bytes: int, per_batch: int = 100) -> list[str]:
    """Publish events of about ``event_bytes`` each until ``total_bytes`` were sent; return every id."""
    pad = "x" * event_bytes
    ids: list[str] = []
    while len(ids) * event_bytes < total_bytes:
        first = len(ids)
        ids += bus.post_batch([("fill.event", {"n": first + i, "pad": pad}) for i in range(per_batch)])
    return ids


def history(bus: BusProcess, *, since: str | None = None, limit: int = 1000) -> list[dict[str, Any]]:
    """The retained events after ``since`` (else the newest), oldest first."""
    query = f"?limit={limit}" + (f"&since={since}" if since else "")
    events: list[dict[str, Any]] = bus.request("GET", "/api/dev/history" + query)["events"]
    return events


def metric(bus: BusProcess, name: str) -> float:
    """The value of an unlabelled Prometheus metric (the sum over its labels)."""
    with urllib.request.urlopen(bus.url + "/metrics", timeout=WAIT) as response:
        text = response.read().decode()
    return sum(float(line.split()[-1]) for line in text.splitlines() if line.split(" ")[0].split("{")[0] == name)


class SSEStream:
    """An SSE stream read with the standard library, event by event."""

    def __init__(self, bus: BusProcess, path: str = "/api/dev/events", *, last_event_id: str | None = None) -> None:
        headers = {"Accept": "text/event-stream"}
        if last_event_id is not None:
            headers["Last-Event-ID"] = last_event_id
        call = urllib.request.Request(bus.url + path, headers=headers)
        self.response = urllib.request.urlopen(call, timeout=WAIT * 3)
        connected = self.event()
        assert connected.get("type") == "connected", connected

    def frame(self) -> dict[str, str]:
        """The next frame with fields (comments skipped), as a field → value mapping."""
        fields: dict[str, str] = {}
        while True:
            line = self.response.readline()
            if not line:
                raise EOFError("the stream ended")
            text = line.decode().rstrip("\n")
            if text:
                if not text.startswith(":"):
                    name, _, value = text.partition(": ")
                    fields[name] = value
            elif fields:
                return fields

    def event(self) -> dict[str, Any]:
        """The next event's envelope (the connected frame included), with the frame's ``id:``."""
        frame = self.frame()
        while "data" not in frame:
            frame = self.frame()
        envelope: dict[str, Any] = json.loads(frame["data"])
        if "id" in frame:
            assert envelope.get("id") == frame["id"], frame
        return envelope

    def events(self, count: int) -> list[dict[str, Any]]:
        return [self.event() for _ in range(count)]

    def close(self) -> None:
        self.response.close()


@contextlib.contextmanager
def sse_stream(bus: BusProcess, *, last_event_id: str | None = None) -> Iterator[SSEStream]:
    stream = SSEStream(bus, last_event_id=last_event_id)
    try:
        yield stream
    finally:
        stream.close()


# ---------------------------------------------------------------- SSE frames, exactly as sent


class SSEFrames:
    """An SSE stream of a real bus, read line by line: every frame after the connected one, exactly as sent."""

    def __init__(self, bus: BusProcess, *, named: bool = False, last_event_id: str | None = None) -> None:
        headers = {"Last-Event-ID": last_event_id} if last_event_id else {}
        call = urllib.request.Request(bus.url + "/api/dev/events" + ("?named=1" if named else ""), headers=headers)
        self.response = urllib.request.urlopen(call, timeout=WAIT * 3)
        self.named = named
        assert b'"type":"connected"' in self.frame()[-1]

    def frame(self) -> list[bytes]:
        """The lines of the next frame (heartbeat comments left out)."""
        lines: list[bytes] = []
        while True:
            line = self.response.readline()
            if not line:
                raise EOFError("the stream ended")
            if line == b"\n":
                if lines:
                    return lines
            elif not line.startswith(b":"):
                lines.append(line.rstrip(b"\n"))

    def until(self, last_id: str) -> list[list[bytes]]:
        """Every frame up to the one of ``last_id``."""
        frames = [self.frame()]
        while frames[-1][0] != b"id: " + last_id.encode():
            frames.append(self.frame())
        return frames

    def close(self) -> None:
        self.response.close()


def expected_frame(event: dict[str, Any], *, named: bool) -> list[bytes]:
    """The exact lines of an event's frame: its id, its name on a named stream, its JSON on one line."""
    data = json.dumps(event, separators=(",", ":"), ensure_ascii=False).encode()
    name = [b"event: " + event["type"].encode()] if named else []
    return [b"id: " + event["id"].encode(), *name, b"data: " + data]


# ---------------------------------------------------------------- clients that never read


class Stalled:
    """A raw client that sends one GET, reads the response head, then never reads again.

    Its receive buffer is tiny, so the bus sees a peer whose window is closed, as
    with a frozen browser tab.
    """

    def __init__(self, bus: BusProcess, path: str, *, headers: dict[str, str] | None = None) -> None:
        port = int(bus.url.rsplit(":", 1)[1])
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        self.sock.settimeout(WAIT)
        self.sock.connect(("127.0.0.1", port))
        self.port = self.sock.getsockname()[1]
        lines = [f"GET {path} HTTP/1.1", f"Host: 127.0.0.1:{port}", "Accept: */*"]
        lines += [f"{name}: {value}" for name, value in (headers or {}).items()]
        self.sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = self.sock.recv(1)
            if not chunk:
                raise EOFError(f"the bus closed {path} before answering")
            head += chunk
        self.status = int(head.split(b" ", 2)[1])

    def read_to_end(self, *, within: float) -> tuple[int, bool]:
        """Read until the bus ends the connection; return (bytes read, whether it was a reset)."""
        deadline = time.monotonic() + within
        received = 0
        while True:
            self.sock.settimeout(max(0.001, deadline - time.monotonic()))
            try:
                chunk = self.sock.recv(256 * 1024)
            except ConnectionResetError:
                return received, True
            except TimeoutError:
                raise AssertionError(f"the connection was still open after {within}s ({received} bytes read)") from None
            if not chunk:
                return received, False
            received += len(chunk)

    def close(self) -> None:
        self.sock.close()


# ---------------------------------------------------------------- the bus process, from /proc


def probe(bus: BusProcess) -> Probe:
    """The bus process's memory, CPU and sockets, as /proc reports them."""
    return Probe(bus.proc.pid)


def wait_idle(bus: BusProcess) -> None:
    """Wait until the bus has done its work (it uses almost no CPU for half a second)."""
    probe(bus).settle(within=WAIT * 6)


def held_peers(bus: BusProcess) -> set[int]:
    """Client ports of the HTTP connections the bus process still holds open."""
    return probe(bus).held_peers(int(bus.url.rsplit(":", 1)[1]))
