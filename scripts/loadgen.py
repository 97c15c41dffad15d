"""The benchmark's load generator: cheap SSE sinks, publishers and process probes.

SSE sinks are asyncio protocols on raw sockets: they count frames with ``bytes.count``
and parse a frame only on the few sinks chosen to check ids or sample latency, so
that the generator stays well below the bus in CPU.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import resource
import socket
import struct
import time
import zlib
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import msgspec
import zmq

# Every SSE frame has exactly one "data: " line, preceded by a newline: the end of
# an "id:" line, or the CRLF of a chunked-encoding header. JSON never holds a raw newline.
FRAME = b"\ndata: "
_ID = re.compile(rb"\nid: ([^\n]*)-(\d+)\n")
_SENT = re.compile(rb'"t":(\d+)')
_ANY_ID = re.compile(rb"\nid: ([^\n]*)\n")

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
NOBLOCK = int(zmq.NOBLOCK)
SNDMORE = int(zmq.SNDMORE) | NOBLOCK


class Tally:
    """Counts sinks that still wait for their expected number of frames."""

    def __init__(self) -> None:
        self.waiting = 0
        self.done = asyncio.Event()
        self.last_at = 0.0

    def arm(self, sinks: list[Sink], expected: int, *, in_all: bool = False) -> None:
        """Expect ``expected`` frames more on every sink from now on (``in_all``: since it connected)."""
        self.done.clear()
        self.waiting = 0
        for sink in sinks:
            sink.target = expected if in_all else sink.frames + expected
            sink.tally = self
            if sink.frames >= sink.target or sink.closed.done():
                sink.target = -1  # already there, or will get nothing more
            else:
                self.waiting += 1
        if not self.waiting:
            self.done.set()

    def reached(self) -> None:
        self.waiting -= 1
        self.last_at = time.monotonic()
        if self.waiting == 0:
            self.done.set()


# Sinks read into one shared buffer: each read is counted before the next one starts.
_BUFFER = bytearray(256 * 1024)
_VIEW = memoryview(_BUFFER)


class Sink(asyncio.BufferedProtocol):
    """One SSE subscriber that counts frames; optionally checks ids and samples latency."""

    def __init__(
        self, request: bytes, *, check_ids: bool = False, latencies: list[int] | None = None, digest: bool = False
    ) -> None:
        self.request = request
        self.check_ids = check_ids
        self.latencies = latencies
        # With ``digest``, every id received goes into a CRC-32, so that a whole
        # sequence of opaque ids can be compared with the expected one.
        self.digest = digest
        self.ids = 0
        self.id_crc = 0
        self._id_carry = b""
        self.frames = -1  # the connected frame is not an event
        self.target = -1
        self.tally: Tally | None = None
        self.last_seq = 0
        self.last_prefix = b""
        self.ids_checked = 0
        self.out_of_order = 0
        self.bytes = 0
        self.connected = asyncio.get_running_loop().create_future()
        self.closed = asyncio.get_running_loop().create_future()
        self.transport: asyncio.Transport | None = None
        self._tail = b""
        self._carry = b""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        transport.write(self.request)

    def get_buffer(self, sizehint: int) -> memoryview:
        return _VIEW

    def buffer_updated(self, nbytes: int) -> None:
        self.bytes += nbytes
        found = _BUFFER.count(FRAME, 0, nbytes)
        if self._tail:
            # A marker split across two reads starts in the last bytes of the previous one.
            found += (self._tail + _BUFFER[: len(FRAME) - 1]).count(FRAME)
        self._tail = bytes(_BUFFER[max(0, nbytes - len(FRAME) + 1) : nbytes])
        if found:
            if self.frames < 0 and not self.connected.done():
                self.connected.set_result(None)
            self.frames += found
        if self.check_ids or self.latencies is not None:
            self._inspect(bytes(_BUFFER[:nbytes]))
        if self.digest:
            self._digest(nbytes)
        if found and self.tally is not None and self.frames >= self.target >= 0:
            self.target = -1
            self.tally.reached()

    def _inspect(self, data: bytes) -> None:
        buffer = self._carry + data
        end = buffer.rfind(b"\n\n")
        if end < 0:
            self._carry = buffer
            return
        # Keep the newline that ends the last whole frame: the next id line's pattern starts with it.
        whole, self._carry = buffer[: end + 1], buffer[end + 1 :]
        if self.check_ids:
            for match in _ID.finditer(whole):
                # Both id forms count up by one: run-seq within a run, a Redis stream's
                # ms-n within a millisecond (n starts at 0 when ms moves on).
                prefix, seq = match.group(1), int(match.group(2))
                if not self.last_prefix:
                    pass
                elif prefix == self.last_prefix:
                    self.out_of_order += seq != self.last_seq + 1
                elif prefix.isdigit() and self.last_prefix.isdigit() and int(prefix) > int(self.last_prefix):
                    self.out_of_order += seq != 0
                else:
                    self.out_of_order += 1
                self.ids_checked += 1
                self.last_prefix, self.last_seq = prefix, seq
        if self.latencies is not None:
            now = time.monotonic_ns()
            self.latencies.extend(now - int(m.group(1)) for m in _SENT.finditer(whole))

    def _digest(self, nbytes: int) -> None:
        # Scan the shared buffer in place; only a line cut by the end of a read is
        # carried over (from its leading newline) to be completed by the next one.
        start = 0
        if self._id_carry:
            newline = _BUFFER.find(b"\n", 0, nbytes)
            if newline < 0:
                self._id_carry += _BUFFER[:nbytes]
                return
            self._add_ids(_ANY_ID.finditer(self._id_carry + _BUFFER[: newline + 1]))
            start = newline
        end = _BUFFER.rfind(b"\n", start, nbytes)
        if end < 0:
            self._id_carry += _BUFFER[start:nbytes]
            return
        self._add_ids(_ANY_ID.finditer(_BUFFER, start, end + 1))
        self._id_carry = bytes(_BUFFER[end:nbytes])

    def _add_ids(self, matches: Iterator[re.Match[bytes]]) -> None:
        crc, count = self.id_crc, self.ids
        for match in matches:
            crc = zlib.crc32(match.group(1) + b"\n", crc)
            count += 1
        self.id_crc, self.ids = crc, count

    def connection_lost(self, exc: Exception | None) -> None:
        if self.tally is not None and self.target >= 0:
            # A closed stream will get nothing more: count it as finished, incomplete.
            self.target = -1
            self.tally.reached()
        if not self.connected.done():
            self.connected.set_exception(ConnectionError(f"stream closed before its first frame: {exc}"))
        if not self.closed.done():
            self.closed.set_result(None)

    def close(self) -> None:
        if self.transport is not None:
            self.transport.abort()


def sse_request(port: int, path: str, headers: dict[str, str] | None = None) -> bytes:
    """The GET request an EventSource would send, minus the browser headers."""
    extra = "".join(f"{name}: {value}\r\n" for name, value in (headers or {}).items())
    return (
        f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nAccept: text/event-stream\r\nCache-Control: no-cache\r\n"
        f"{extra}\r\n"
    ).encode()


def id_digest(ids: Iterable[str]) -> int:
    """The CRC-32 a digesting :class:`Sink` computes when it receives exactly ``ids``, in this order."""
    crc = 0
    for event_id in ids:
        crc = zlib.crc32(event_id.encode() + b"\n", crc)
    return crc


async def open_sinks(
    port: int,
    count: int,
    *,
    path: str | Callable[[int], str] = "/api/dev/events",
    headers: dict[str, str] | None = None,
    check_every: int = 0,
    latency_every: int = 0,
    latencies: list[int] | None = None,
    digest: bool = False,
    concurrency: int = 100,
) -> list[Sink]:
    """Connect ``count`` sinks, at most ``concurrency`` at a time, and wait for their connected frames.

    ``path`` is one path for all, or a function of the sink's index.
    """
    loop = asyncio.get_running_loop()
    paths = path if callable(path) else lambda _: path
    gate = asyncio.Semaphore(concurrency)
    sinks: list[Sink] = []

    async def one(index: int) -> None:
        check = bool(check_every) and index % check_every == 0
        sampled = latencies if latency_every and index % latency_every == 0 else None
        request = sse_request(port, paths(index), headers)
        async with gate:
            _, sink = await loop.create_connection(
                lambda: Sink(request, check_ids=check, latencies=sampled, digest=digest), "127.0.0.1", port
            )
            sinks.append(sink)
            await sink.connected

    await asyncio.gather(*(one(i) for i in range(count)))
    return sinks


def close_sinks(sinks: list[Sink]) -> None:
    """Abort every sink's connection."""
    for sink in sinks:
        sink.close()


def stalled_client(port: int, path: str = "/api/dev/events", headers: dict[str, str] | None = None) -> socket.socket:
    """Open a subscriber that never reads, with a tiny receive window."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", port))
    sock.sendall(sse_request(port, path, headers))
    return sock


def raise_fd_limit() -> int:
    """Raise this process's open-file limit to the hard limit; return it."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return hard


def cpu_self() -> float:
    """CPU seconds (user + system) this process has used."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


class Probe:
    """CPU and memory of another process, read from /proc."""

    def __init__(self, pid: int) -> None:
        self.pid = pid

    def cpu(self) -> float:
        """CPU seconds (user + system) used so far."""
        with open(f"/proc/{self.pid}/stat") as stat:
            fields = stat.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS

    def memory(self) -> dict[str, int]:
        """VmRSS and VmHWM (peak RSS) in bytes."""
        found = {}
        with open(f"/proc/{self.pid}/status") as status:
            for line in status:
                name, _, value = line.partition(":")
                if name in ("VmRSS", "VmHWM"):
                    found[name] = int(value.split()[0]) * 1024
        return found

    def rss(self) -> int:
        return self.memory()["VmRSS"]

    def peak(self) -> int:
        """Peak RSS (VmHWM) in bytes since the start or the last :meth:`reset_peak`."""
        return self.memory()["VmHWM"]

    def reset_peak(self) -> None:
        """Measure the peak RSS afresh from now on (Linux: 5 > /proc/PID/clear_refs; our own child only)."""
        with open(f"/proc/{self.pid}/clear_refs", "w") as refs:
            refs.write("5")

    def settle(self, *, within: float = 60.0, window: float = 0.5, busy: float = 0.05) -> None:
        """Block until the process uses under ``busy`` of a core over ``window`` seconds: it has done its work."""
        deadline = time.monotonic() + within
        used, since = self.cpu(), time.monotonic()
        while True:
            time.sleep(window)
            now_used, now = self.cpu(), time.monotonic()
            if now_used - used <= busy * (now - since):
                return
            if now > deadline:
                raise TimeoutError(f"process {self.pid} was still busy after {within}s")
            used, since = now_used, now

    def held_peers(self, port: int) -> set[int]:
        """Client ports of the TCP connections to ``port`` this process still holds open.

        A socket the process has closed (even one the kernel is still flushing) is no
        longer among its file descriptors, so it is not counted.
        """
        inodes = set()
        for fd in os.listdir(f"/proc/{self.pid}/fd"):
            try:
                target = os.readlink(f"/proc/{self.pid}/fd/{fd}")
            except OSError:
                continue  # closed meanwhile
            if target.startswith("socket:["):
                inodes.add(target[8:-1])
        peers = set()
        for table in ("tcp", "tcp6"):
            try:
                with open(f"/proc/{self.pid}/net/{table}") as rows:
                    next(rows)
                    for row in rows:
                        fields = row.split()
                        local, remote = int(fields[1].rsplit(":", 1)[1], 16), int(fields[2].rsplit(":", 1)[1], 16)
                        if local == port and remote and fields[9] in inodes:
                            peers.add(remote)
            except FileNotFoundError:
                continue
        return peers


async def post_events(url: str, bodies: Callable[[int], bytes], count: int, *, in_flight: int) -> None:
    """POST ``count`` JSON bodies to ``url`` with ``in_flight`` requests outstanding."""
    import aiohttp

    next_index = 0
    headers = {"Content-Type": "application/json"}

    async def worker(session: aiohttp.ClientSession) -> None:
        nonlocal next_index
        while next_index < count:
            index = next_index
            next_index += 1
            async with session.post(url, data=bodies(index), headers=headers) as response:
                if response.status != 200:
                    raise RuntimeError(f"POST {url} answered {response.status}: {await response.text()}")
                await response.read()

    connector = aiohttp.TCPConnector(limit=in_flight)
    async with aiohttp.ClientSession(connector=connector) as session:
        await asyncio.gather(*(worker(session) for _ in range(in_flight)))


def http_publish(
    url: str, count: int, *, in_flight: int, size: int = 0, per_batch: int = 0, report: Any = None
) -> dict[str, float]:
    """POST ``count`` events to ``url`` (in a child process): one per request, or ``per_batch`` per request."""
    body = webhook_body(size)
    requests = count
    bodies = body
    if per_batch:
        requests = -(-count // per_batch)

        def bodies(index: int) -> bytes:
            first = index * per_batch
            items = b",".join(body(n) for n in range(first, min(count, first + per_batch)))
            return b'{"events":[' + items + b"]}"

    cpu_before = cpu_self()  # not the interpreter's start-up
    started = time.monotonic()
    asyncio.run(post_events(url, bodies, requests, in_flight=in_flight))
    result = {"started": started, "finished": time.monotonic(), "cpu": cpu_self() - cpu_before}
    if report is not None:
        report.send(result)
    return result


def webhook_body(size: int = 0) -> Callable[[int], bytes]:
    """A function building the JSON body of the webhook POST for event number ``index``."""
    pad = "x" * size

    def body(index: int) -> bytes:
        data: dict[str, Any] = {"n": index}
        if pad:
            data["pad"] = pad
        return json.dumps({"event_type": "bench.tick", "data": data}).encode()

    return body


def zmq_publish(
    endpoint: str,
    count: int,
    *,
    size: int = 0,
    rate: float = 0.0,
    stamp: bool = False,
    report: Any = None,
    timeout: float = 10.0,
) -> dict[str, float]:
    """Send ``count`` events to a bus's ZeroMQ ingest (in a child process); return timings.

    An XPUB socket learns when the bus's subscription arrives, so nothing is sent
    into the void; XPUB_NODROP turns the high-water mark into backpressure.
    """
    encode = msgspec.msgpack.Encoder().encode
    context = zmq.Context()
    sock = context.socket(zmq.XPUB)
    try:
        sock.setsockopt(zmq.XPUB_NODROP, 1)
        sock.setsockopt(zmq.SNDHWM, 10_000)
        sock.connect(endpoint)
        if not sock.poll(int(timeout * 1000)):
            raise TimeoutError(f"no subscription from the bus at {endpoint} within {timeout}s")
        sock.recv()
        data: dict[str, Any] = {"pad": "x" * size} if size else {}
        # Events are told apart by the ids the bus gives them, so unless each one
        # carries its send time, one encoded body serves them all.
        frames = [b"bench.tick", encode({"type": "bench.tick", "data": data})]
        cpu_before = cpu_self()  # not the interpreter's start-up
        started = time.monotonic()
        for index in range(count):
            if rate:
                delay = started + index / rate - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
            if stamp:
                data["t"] = time.monotonic_ns()
                frames[1] = encode({"type": "bench.tick", "data": data})
            while True:
                try:
                    # Frame by frame with plain-int flags: send_multipart's checks and
                    # pyzmq's enum flags cost more than the send. Past the first frame
                    # a message is never refused.
                    sock.send(frames[0], SNDMORE)
                    sock.send(frames[1], NOBLOCK)
                    break
                except zmq.Again:
                    # At the high-water mark POLLOUT can be reported before there is
                    # room again; back off briefly instead of spinning on a core.
                    sock.poll(1000, zmq.POLLOUT)
                    time.sleep(0.0005)
        finished = time.monotonic()
        result = {"started": started, "finished": finished, "cpu": cpu_self() - cpu_before}
    finally:
        sock.close(linger=int(timeout * 1000))
        context.term()
    if report is not None:
        report.send(result)
    return result


def publisher_publish(
    endpoint: str,
    count: int,
    *,
    numbered: bool = False,
    hold: int = 10_000,
    report: Any = None,
    timeout: float = 10.0,
) -> dict[str, Any]:
    """Send ``count`` events through ``devbus.Publisher`` (acknowledged; in a child process); return timings.

    ``finished`` is when the last ``emit`` returned, ``acknowledged`` when ``close`` had
    every event acknowledged. With ``numbered``, event i carries ``{"n": i}`` and the
    result lists the numbers ``emit`` dropped (the bus away past ``hold`` events).
    """
    import logging

    import devbus

    # What it drops while the bus is away is counted in the result; its warnings would only clutter the table.
    logging.getLogger("devbus").setLevel(logging.ERROR)
    publisher = devbus.Publisher(ingest=endpoint, timeout=timeout, linger=WAIT_ACKS, hold=hold)
    publisher.wait_for_bus()
    emit = publisher.emit
    dropped: list[int] = []
    cpu_before = cpu_self()
    started = time.monotonic()
    if numbered:
        for index in range(count):
            before = publisher.dropped
            emit("bench.tick", {"n": index})
            if publisher.dropped != before:
                dropped.append(index)
    else:
        for _ in range(count):
            emit("bench.tick")
    finished = time.monotonic()
    publisher.close()
    result = {
        "started": started,
        "finished": finished,
        "acknowledged": time.monotonic(),
        "cpu": cpu_self() - cpu_before,
        "dropped": dropped if numbered else publisher.dropped,
        "undelivered": publisher.undelivered,
    }
    if report is not None:
        report.send(result)
    return result


WAIT_ACKS = 300.0  # seconds close() may wait for the last acknowledgements


def zmq_publish_acked(
    endpoint: str, count: int, *, window: int = 10_000, report: Any = None, timeout: float = 10.0
) -> dict[str, float]:
    """Send ``count`` events over the acknowledged protocol from a raw DEALER (in a child process).

    The counterpart of :func:`zmq_publish` (one encoded body for every event, plain sends),
    so that the two differ only by what acknowledgement costs: a seq frame per event, at
    most ``window`` events unacknowledged, and reading the bus's acks.
    """
    from devbus.frames import ACK, decode_ack, encode_hello

    seq_frame = struct.Struct(">Q").pack
    encode = msgspec.msgpack.Encoder().encode
    context = zmq.Context()
    sock = context.socket(zmq.DEALER)
    try:
        sock.setsockopt(zmq.IMMEDIATE, 1)
        sock.setsockopt(zmq.SNDHWM, window + 16)
        sock.connect(endpoint)
        sock.send_multipart(encode_hello(f"bench-{os.getpid()}", 1))
        if not sock.poll(int(timeout * 1000)):
            raise TimeoutError(f"no answer to the hello from the bus at {endpoint} within {timeout}s")
        head, body = sock.recv_multipart()
        acked = decode_ack(body).seq if head == ACK else 0
        frames = [b"bench.tick", encode({"type": "bench.tick", "data": {}})]
        cpu_before = cpu_self()
        started = time.monotonic()
        sent = 0
        while acked < count:
            while sent < count and sent - acked < window:
                sent += 1
                sock.send(frames[0], SNDMORE)
                sock.send(frames[1], zmq.SNDMORE)
                sock.send(seq_frame(sent))
            if sock.poll(1000 if sent - acked >= window or sent == count else 0):
                while True:
                    try:
                        head, body = sock.recv_multipart(NOBLOCK)
                    except zmq.Again:
                        break
                    if head == ACK:
                        acked = max(acked, decode_ack(body).seq)
        finished = time.monotonic()
        result = {"started": started, "finished": finished, "cpu": cpu_self() - cpu_before}
    finally:
        sock.close(linger=0)
        context.term()
    if report is not None:
        report.send(result)
    return result


def redis_xadd(
    url: str, key: str, count: int, *, history: int, per_call: int = 1000, report: Any = None
) -> dict[str, Any]:
    """XADD ``count`` entries shaped as the Redis store's to stream ``key``, ``per_call`` to a pipeline.

    The bare yardstick of the Redis store's ingest: redis-py (with hiredis if installed)
    doing nothing but appending and trimming as a bus does, in a child process.
    """
    import redis
    from redis.utils import HIREDIS_AVAILABLE

    client = redis.Redis.from_url(url)
    tail = json.dumps(
        {"data": {}, "timestamp": "2026-01-01T00:00:00.000000Z", "source": "zmq"}, separators=(",", ":")
    ).encode()
    fields: dict[Any, Any] = {"t": b"bench.tick", "j": tail}
    cpu_before = cpu_self()
    started = time.monotonic()
    sent = 0
    while sent < count:
        pipeline = client.pipeline(transaction=False)
        for _ in range(min(per_call, count - sent)):
            pipeline.xadd(key, fields, maxlen=history, approximate=True)
        sent += len(pipeline)
        pipeline.execute()
    result = {
        "started": started,
        "finished": time.monotonic(),
        "cpu": cpu_self() - cpu_before,
        "hiredis": HIREDIS_AVAILABLE,
    }
    client.close()
    if report is not None:
        report.send(result)
    return result
