"""Benchmark devbus against its targets and against the hand-rolled pattern it replaces.

    python scripts/bench.py                 # every scenario at full size (a few minutes)
    python scripts/bench.py --quick         # small sizes, a smoke test
    python scripts/bench.py --scenario http-fanout --scenario idle
    python scripts/bench.py --store sqlite:  # every bus on a fresh SQLite store
    python scripts/bench.py --store redis://127.0.0.1:6379/0 --scenario cluster  # two buses on one Redis

Each scenario starts its own `devbus run` (free ports, --quiet), drives it from this
process (SSE sinks, HTTP posts) and a publisher process (ZeroMQ), stops it with SIGTERM,
and reports the bus's CPU and memory beside the generator's. Results go to a table on
stdout and to JSON (``--out``, default bench-results/<time>.json).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import socket
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import hammer
import loadgen
import posts
import report
import restarts
from loadgen import Sink, Tally, close_sinks, cpu_self, id_digest, open_sinks, stalled_client
from servers import ROOT, Bare, Devbus, Reference, Server, is_shared

WAIT = 300.0  # seconds any single phase may take before the scenario fails
POST_GENERATOR: str | None = None  # --generator: what drives the post scenario (None: wrk if installed)


@dataclass(frozen=True)
class Sizes:
    """How big each scenario is."""

    burst: tuple[int, int]  # subscribers, events
    post: tuple[int, int, int]  # connections, seconds per round, rounds (each round: the bare stack, then devbus)
    http: tuple[int, int, int]  # subscribers, events, in flight
    http_reference_events: int
    latency: tuple[int, int, float]  # subscribers, events/s, seconds
    idle: int
    slow: tuple[int, int, int]  # fast subscribers, events, bytes per event
    ingest: int
    replay: tuple[int, int, int, int]  # history bytes, bytes per event, stalled resumes, reading resumes
    replay_waits: tuple[float, float]  # seconds the bus may take to evict the stalled; seconds after that
    filters: tuple[int, int]  # subscribers, events
    cluster: tuple[int, int, int]  # subscribers, events fanned out, events sent to each of two buses
    restart: tuple[int, int]  # events, kills of the bus


FULL = Sizes(
    burst=(1000, 5000),
    post=(32, 5, 3),
    http=(1000, 2000, 8),
    http_reference_events=300,
    latency=(100, 500, 10.0),
    idle=10_000,
    slow=(100, 100_000, 1024),
    ingest=300_000,
    replay=(64 * 2**20, 8192, 100, 100),
    replay_waits=(60.0, 5.0),
    filters=(1000, 100_000),
    cluster=(1000, 5000, 100_000),
    restart=(300_000, 3),
)
QUICK = Sizes(
    burst=(50, 500),
    post=(32, 1, 1),
    http=(50, 200, 8),
    http_reference_events=100,
    latency=(10, 200, 1.0),
    idle=200,
    slow=(10, 20_000, 1024),
    ingest=5_000,
    replay=(4 * 2**20, 8192, 10, 10),
    replay_waits=(15.0, 0.5),
    filters=(50, 2_000),
    cluster=(50, 500, 5_000),
    restart=(20_000, 3),
)


class Meter:
    """CPU of the bus and of the generator over one measured window, and the bus's memory."""

    def __init__(self, server: Server) -> None:
        self.server = server
        self.bus_cpu = server.probe.cpu()
        self.gen_cpu = cpu_self()
        self.rss_before = server.probe.rss()

    def stop(self, *, publisher_cpu: float = 0.0) -> dict[str, float]:
        memory = self.server.probe.memory()
        return {
            "bus_cpu_s": round(self.server.probe.cpu() - self.bus_cpu, 2),
            "gen_cpu_s": round(cpu_self() - self.gen_cpu + publisher_cpu, 2),
            "publisher_cpu_s": round(publisher_cpu, 2),
            "bus_rss_mb": round(memory["VmRSS"] / 2**20, 1),
            "bus_rss_before_mb": round(self.rss_before / 2**20, 1),
            "bus_peak_rss_mb": round(memory["VmHWM"] / 2**20, 1),
        }


async def in_child(target: Callable[..., dict[str, float]], *args: Any, **options: Any) -> dict[str, float]:
    """Run a publisher in a child process, so it never competes with the sinks' loop; return its timings."""
    context = multiprocessing.get_context("spawn")
    receive, send = context.Pipe(duplex=False)
    process = context.Process(target=target, args=args, kwargs={**options, "report": send})
    process.start()
    send.close()
    try:
        return await asyncio.to_thread(receive.recv)
    except EOFError:
        raise RuntimeError(f"the publisher failed (exit code {process.exitcode})") from None
    except BaseException:
        process.terminate()  # cancelled: a publisher held back by a slow bus would block for good
        raise
    finally:
        await asyncio.to_thread(process.join, 30)
        receive.close()


def order_check(sinks: list[Sink], events: int) -> dict[str, Any]:
    """Every sink got exactly ``events``; the checked ones got them in id order."""
    checked = [s for s in sinks if s.check_ids]
    return {
        "complete": sum(1 for s in sinks if s.frames == events),
        "subscribers": len(sinks),
        "checked_in_order": sum(1 for s in checked if s.out_of_order == 0 and s.ids_checked > 0),
        "checked": len(checked),
    }


def all_correct(check: dict[str, Any]) -> bool:
    return bool(check["complete"] == check["subscribers"] and check["checked_in_order"] == check["checked"])


async def fanout(
    server: Server, subscribers: int, events: int, publish: Callable[[], Awaitable[dict[str, float]]]
) -> dict[str, Any]:
    """Connect sinks, publish, wait until every sink has every event; report the rate."""
    # The reference sends no ids, so only numbered streams (devbus, the bare stack) can be checked for order.
    check_every = 20 if server.numbered else 0
    async with asyncio.timeout(WAIT):
        sinks = await open_sinks(server.port, subscribers, check_every=check_every)
    try:
        tally = Tally()
        tally.arm(sinks, events)
        meter = Meter(server)
        started = time.monotonic()
        async with asyncio.timeout(WAIT):
            timing = await publish()
            await tally.done.wait()
        started = timing.get("started", started)
        elapsed = tally.last_at - started
        result = {
            "deliveries_per_s": round(subscribers * events / elapsed),
            "elapsed_s": round(elapsed, 3),
            **order_check(sinks, events),
            **meter.stop(publisher_cpu=timing.get("cpu", 0.0)),
        }
    finally:
        close_sinks(sinks)
    return result


def publish_zmq(endpoint: str, count: int, **options: Any) -> Awaitable[dict[str, float]]:
    return in_child(loadgen.zmq_publish, endpoint, count, **options)


def publish_acked(endpoint: str, count: int, **options: Any) -> Awaitable[dict[str, Any]]:
    """``count`` events through ``devbus.Publisher``, each acknowledged by the bus."""
    return in_child(loadgen.publisher_publish, endpoint, count, **options)


def http_posts(server: Server, events: int, in_flight: int) -> Awaitable[dict[str, float]]:
    url = f"http://127.0.0.1:{server.port}/api/dev/webhook"
    return in_child(loadgen.http_publish, url, events, in_flight=in_flight)


async def scenario_burst(sizes: Sizes) -> dict[str, Any]:
    """The burst through devbus, then through the bare stack (aiohttp + pyzmq, encode once) in the same run."""
    subscribers, events = sizes.burst
    bus = Devbus("--max-subscribers", str(subscribers + 10))
    try:
        if bus.ingest is None:
            return {"skipped": "this bus has no ZeroMQ ingest"}
        result = await fanout(bus, subscribers, events, lambda: publish_zmq(bus.ingest or "", events))
    finally:
        bus.stop()
    bare = Bare("fanout")
    try:
        result["bare"] = await fanout(bare, subscribers, events, lambda: publish_zmq(bare.ingest or "", events))
    finally:
        bare.stop()
    result["ratio"] = round(result["deliveries_per_s"] / result["bare"]["deliveries_per_s"], 2)
    # Where the sinks, not the server, set the pace, the CPU each server spent says more than the rate.
    result["cpu_ratio"] = round(result["bare"]["bus_cpu_s"] / max(result["bus_cpu_s"], 0.01), 2)
    result["correct"] = all_correct(result) and all_correct(result["bare"])
    result["met"] = result["correct"] and result["deliveries_per_s"] >= 2_000_000 and result["ratio"] >= 0.9
    return result


async def scenario_post(sizes: Sizes) -> dict[str, Any]:
    connections, seconds, rounds = sizes.post
    return await posts.scenario_post(connections, seconds, rounds, generator=POST_GENERATOR, in_child=in_child)


async def scenario_http_fanout(sizes: Sizes) -> dict[str, Any]:
    subscribers, events, in_flight = sizes.http
    bus = Devbus("--max-subscribers", str(subscribers + 10))
    try:
        result = await fanout(bus, subscribers, events, lambda: http_posts(bus, events, in_flight))
    finally:
        bus.stop()
    reference = Reference()
    try:
        ref_events = sizes.http_reference_events
        result["reference"] = await fanout(
            reference, subscribers, ref_events, lambda: http_posts(reference, ref_events, in_flight)
        )
    finally:
        reference.stop()
    result["ratio"] = round(result["deliveries_per_s"] / result["reference"]["deliveries_per_s"], 1)
    result["correct"] = all_correct(result) and all_correct(result["reference"])
    result["met"] = result["correct"] and result["deliveries_per_s"] >= 150_000 and result["ratio"] >= 5
    return result


def percentile(values: list[int], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))] / 1e6


async def scenario_latency(sizes: Sizes) -> dict[str, Any]:
    subscribers, rate, seconds = sizes.latency
    events = int(rate * seconds)
    bus = Devbus("--max-subscribers", str(subscribers + 10))
    latencies: list[int] = []
    try:
        if bus.ingest is None:
            return {"skipped": "this bus has no ZeroMQ ingest"}
        async with asyncio.timeout(WAIT):
            sinks = await open_sinks(bus.port, subscribers, check_every=10, latency_every=5, latencies=latencies)
        try:
            tally = Tally()
            tally.arm(sinks, events)
            meter = Meter(bus)
            async with asyncio.timeout(WAIT):
                timing = await publish_zmq(bus.ingest, events, rate=rate, stamp=True)
                await tally.done.wait()
            result = {
                "p50_ms": round(percentile(latencies, 0.50), 3),
                "p99_ms": round(percentile(latencies, 0.99), 3),
                "max_ms": round(max(latencies) / 1e6, 3),
                "samples": len(latencies),
                **order_check(sinks, events),
                **meter.stop(publisher_cpu=timing["cpu"]),
            }
        finally:
            close_sinks(sinks)
    finally:
        bus.stop()
    result["correct"] = all_correct(result) and result["samples"] > 0
    result["met"] = result["correct"] and result["p99_ms"] <= 5.0
    return result


async def health(server: Devbus) -> dict[str, Any]:
    return await get_json(server, "/api/dev/health")


async def metric(server: Devbus, name: str) -> float:
    async with aiohttp.ClientSession() as session, session.get(f"http://127.0.0.1:{server.port}/metrics") as r:
        text = await r.text()
    return sum(float(line.split()[-1]) for line in text.splitlines() if line.startswith(name + " "))


async def hold_idle(server: Server, subscribers: int) -> dict[str, Any]:
    """Connect ``subscribers`` idle sinks and report the bus memory each one costs."""
    meter = Meter(server)
    started = time.monotonic()
    async with asyncio.timeout(WAIT):
        sinks = await open_sinks(server.port, subscribers, concurrency=200)
    try:
        connect_s = time.monotonic() - started
        held = sum(1 for s in sinks if not s.closed.done())
        if isinstance(server, Devbus):
            held = min(held, (await health(server))["subscribers"])
        rss_after = server.probe.rss()
        result = {
            "held": held,
            "subscribers": subscribers,
            "connect_s": round(connect_s, 2),
            "kb_per_subscriber": round((rss_after - meter.rss_before) / subscribers / 1024, 1),
            **meter.stop(),
        }
    finally:
        close_sinks(sinks)
    return result


async def scenario_idle(sizes: Sizes) -> dict[str, Any]:
    loadgen.raise_fd_limit()
    bus = Devbus("--max-subscribers", str(sizes.idle + 10))
    try:
        result = await hold_idle(bus, sizes.idle)
    finally:
        bus.stop()
    reference = Reference()
    try:
        result["reference"] = await hold_idle(reference, sizes.idle)
    finally:
        reference.stop()
    result["ratio"] = round(result["reference"]["kb_per_subscriber"] / max(result["kb_per_subscriber"], 0.1), 1)
    result["correct"] = result["held"] == sizes.idle and result["reference"]["held"] == sizes.idle
    result["met"] = result["correct"] and result["kb_per_subscriber"] <= 15
    return result


async def scenario_slow(sizes: Sizes) -> dict[str, Any]:
    fast, events, size = sizes.slow
    bus = Devbus("--max-subscribers", str(fast + 10))
    try:
        stalled = stalled_client(bus.port)
        try:
            if bus.ingest is not None:
                publish = lambda: publish_zmq(bus.ingest or "", events, size=size)  # noqa: E731
            else:
                publish = lambda: batch_posts(bus, events, size)  # noqa: E731
            result = await fanout(bus, fast, events, publish)
            result["evicted"] = int(await metric(bus, "devbus_evictions_total"))
        finally:
            stalled.close()
        result["via"] = "zmq" if bus.ingest is not None else "http batch"
    finally:
        bus.stop()
    result["rss_growth_mb"] = round(result["bus_peak_rss_mb"] - result["bus_rss_before_mb"], 1)
    result["correct"] = all_correct(result) and result["evicted"] == 1
    result["met"] = result["correct"] and result["rss_growth_mb"] <= 64
    return result


def batch_posts(bus: Devbus, events: int, size: int) -> Awaitable[dict[str, float]]:
    url = f"http://127.0.0.1:{bus.port}/api/dev/batch"
    return in_child(loadgen.http_publish, url, events, in_flight=1, size=size, per_batch=500)


def publish_zmq_acked(endpoint: str, count: int) -> Awaitable[dict[str, float]]:
    """``count`` events from a raw DEALER over the acknowledged protocol (a seq each, acks read)."""
    return in_child(loadgen.zmq_publish_acked, endpoint, count)


async def scenario_ingest(sizes: Sizes) -> dict[str, Any]:
    """The same burst fire-and-forget (a raw XPUB), acknowledged (a raw DEALER) and from a Publisher, a bus each.

    The two raw senders differ only by the acknowledgement (a seq frame, a window, the
    acks), so their ratio is what acks cost; the Publisher adds encoding each event in
    Python and its thread, as an app pays for it.
    """
    events = sizes.ingest
    runs: dict[str, dict[str, Any]] = {}
    senders = (("fire_and_forget", publish_zmq), ("acknowledged", publish_zmq_acked), ("publisher", publish_acked))
    for name, publish in senders:
        bus = Devbus()
        try:
            if bus.ingest is None:
                return {"skipped": "this bus has no ZeroMQ ingest"}
            endpoint = bus.ingest
            runs[name] = await fanout(bus, 1, events, lambda: publish(endpoint, events))  # noqa: B023
        finally:
            bus.stop()
    result, plain, publisher = runs["acknowledged"], runs["fire_and_forget"], runs["publisher"]
    result["events_per_s"] = result.pop("deliveries_per_s")
    result["fire_and_forget_per_s"] = plain["deliveries_per_s"]
    result["fire_and_forget_bus_cpu_s"] = plain["bus_cpu_s"]
    result["publisher_per_s"] = publisher["deliveries_per_s"]
    result["publisher_bus_cpu_s"] = publisher["bus_cpu_s"]
    result["publisher_cpu_s"] = publisher["publisher_cpu_s"]
    result["ratio"] = round(result["events_per_s"] / plain["deliveries_per_s"], 2)
    result["correct"] = all_correct(result) and all_correct(plain) and all_correct(publisher)
    result["met"] = result["correct"] and result["events_per_s"] >= 100_000 and result["ratio"] >= 0.9
    return result


async def scenario_restart(sizes: Sizes) -> dict[str, Any]:
    count, kills = sizes.restart
    # The publisher holds the whole stream, so that it is still sending at every kill
    # (with 10,000 it would drop most of the rest, counted, while the bus restarts).
    return await restarts.scenario_restart(
        count, kills, lambda endpoint, n: publish_acked(endpoint, n, numbered=True, hold=n)
    )


async def get_json(server: Devbus, path: str) -> dict[str, Any]:
    async with aiohttp.ClientSession() as session, session.get(f"http://127.0.0.1:{server.port}{path}") as r:
        if r.status != 200:
            raise RuntimeError(f"GET {path} answered {r.status}: {await r.text()}")
        return dict(await r.json())


async def post_batch(server: Devbus, session: aiohttp.ClientSession, body: bytes) -> list[str]:
    """POST one /batch body; return the ids of its events."""
    url = f"http://127.0.0.1:{server.port}/api/dev/batch"
    async with session.post(url, data=body, headers={"Content-Type": "application/json"}) as r:
        if r.status != 200:
            raise RuntimeError(f"POST /batch answered {r.status}: {await r.text()}")
        ids: list[str] = (await r.json())["ids"]
        return ids


async def until(condition: Callable[[], bool], within: float) -> bool:
    """Poll ``condition`` for up to ``within`` seconds; return whether it came true."""
    deadline = time.monotonic() + within
    while not condition():
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(0.05)
    return True


async def fill_history(bus: Devbus, history_bytes: int, size: int) -> list[str]:
    """Publish events with ``size`` bytes of padding until history is over-full; return every id, in order."""
    per_batch = max(1, 2**19 // (size + 200))  # about 512 KiB a request, under --max-body
    item = {"event_type": "bench.fill", "data": {"pad": "x" * size}}
    body = json.dumps({"events": [item] * per_batch}).encode()
    ids: list[str] = []
    async with aiohttp.ClientSession() as session:
        while len(ids) * size < history_bytes * 1.1:
            ids += await post_batch(bus, session, body)
    return ids


STALLED_RSS_LIMIT = 512 * 2**20  # what all the stalled resumes together may add to the bus
RUNAWAY = 2 * 2**30  # bus growth at which the reading phase stops the bus: the answer is known by then


async def stalled_resumes(bus: Devbus, resume_from: str, count: int, waits: tuple[float, float]) -> dict[str, Any]:
    """Open ``count`` resumes that never read; their cost, and the bus's memory once it has evicted them."""
    evict_within, after = waits
    probe = bus.probe
    await asyncio.to_thread(probe.settle)
    before = probe.rss()
    probe.reset_peak()
    sockets: list[socket.socket] = []
    try:
        # Ten at a time, stopping early once past the limit: no need to take the machine down to know.
        while len(sockets) < count and probe.peak() - before <= STALLED_RSS_LIMIT:
            for _ in range(min(10, count - len(sockets))):
                sockets.append(stalled_client(bus.port, headers={"Last-Event-ID": resume_from}))
            await asyncio.to_thread(probe.settle)
        ports = {sock.getsockname()[1] for sock in sockets}
        held = len(probe.held_peers(bus.port) & ports)
        growth = probe.peak() - before
        # A replay that takes nothing is dropped by the bus after a while: wait for it to let go of all.
        evicted = await until(lambda: not probe.held_peers(bus.port) & ports, evict_within)
        for sock in sockets:
            sock.close()  # those the bus kept, if any
        await asyncio.sleep(after)  # the target: memory is back this long after the eviction
        rss_after = probe.rss()
    finally:
        for sock in sockets:
            sock.close()
    return {
        "stalled": count,
        "stalled_opened": len(sockets),
        "stalled_held": held,
        "stalled_rss_growth_mb": round(growth / 2**20, 1),
        "evicted_by_bus": evicted,
        "rss_start_mb": round(before / 2**20, 1),
        "rss_after_evicted_mb": round(rss_after / 2**20, 1),
        "rss_after_evicted_ratio": round(rss_after / before, 3),
    }


async def stop_runaway(bus: Devbus, limit: int, seen: dict[str, Any]) -> None:
    """Kill the bus if its RSS passes ``limit`` (a bus that copies each replay in full would exhaust the machine)."""
    await until(lambda: bus.probe.rss() > limit, float("inf"))
    seen["runaway"] = f"stopped the bus at {bus.probe.rss() / 2**20:.0f} MB RSS"
    bus.proc.kill()


async def reading_resumes(bus: Devbus, resume_from: str, count: int, expected: list[str]) -> dict[str, Any]:
    """``count`` readers resume after ``resume_from`` together; live events follow; does each get all, in order?"""
    probe = bus.probe
    start = probe.rss()
    probe.reset_peak()
    seen: dict[str, Any] = {}
    runaway = asyncio.create_task(stop_runaway(bus, start + RUNAWAY, seen))
    started = time.monotonic()
    try:
        try:
            async with asyncio.timeout(WAIT):
                sinks = await open_sinks(bus.port, count, headers={"Last-Event-ID": resume_from}, digest=True)
        except ConnectionError:
            if "runaway" not in seen:
                raise
            return {"readers": count, "readers_complete": 0, "readers_in_order": 0, "readers_runaway": seen["runaway"]}
        try:
            async with aiohttp.ClientSession() as session:
                live = [{"event_type": "bench.live", "data": {"n": n}} for n in range(20)]
                expected = expected + await post_batch(bus, session, json.dumps({"events": live}).encode())
            tally = Tally()
            tally.arm(sinks, len(expected), in_all=True)
            async with asyncio.timeout(WAIT):
                await tally.done.wait()
            elapsed = time.monotonic() - started
            digest = id_digest(expected)
            result = {
                "readers": count,
                "readers_complete": sum(1 for s in sinks if s.frames == len(expected)),
                "readers_in_order": sum(1 for s in sinks if s.ids == len(expected) and s.id_crc == digest),
                "replay_s": round(elapsed, 2),
                "replay_mb_per_s": round(sum(s.bytes for s in sinks) / elapsed / 2**20),
            }
        finally:
            close_sinks(sinks)
    finally:
        runaway.cancel()
    if "runaway" in seen:
        result["readers_runaway"] = seen["runaway"]
    else:
        result["readers_peak_rss_growth_mb"] = round((probe.peak() - start) / 2**20, 1)
    return result


async def scenario_replay(sizes: Sizes) -> dict[str, Any]:
    history_bytes, size, stalled, readers = sizes.replay
    loadgen.raise_fd_limit()
    bus = Devbus("--history-bytes", str(history_bytes), "--max-subscribers", str(stalled + readers + 10))
    try:
        ids = await fill_history(bus, history_bytes, size)
        # The oldest retained event: the first one after an id that is no longer retained.
        oldest = (await get_json(bus, f"/api/dev/history?since={ids[0]}&limit=1"))["events"][0]["id"]
        after = ids[ids.index(oldest) + 1 :]
        result: dict[str, Any] = {"retained": len(after) + 1, "history_mb": round(history_bytes / 2**20)}
        meter = Meter(bus)
        result |= await stalled_resumes(bus, oldest, stalled, sizes.replay_waits)
        result |= await reading_resumes(bus, oldest, readers, after)
        if bus.proc.poll() is None:
            result |= meter.stop()
    finally:
        bus.stop()
    result["correct"] = result["readers_complete"] == result["readers_in_order"] == readers
    result["met"] = (
        result["correct"]
        and result["stalled_opened"] == stalled
        and result["stalled_rss_growth_mb"] <= STALLED_RSS_LIMIT / 2**20
        and result["evicted_by_bus"]
        and abs(result["rss_after_evicted_ratio"] - 1) <= 0.10
    )
    return result


async def probe_health(server: Devbus, times: list[float]) -> None:
    """Time GET /health every 0.2 s until cancelled: does the bus still answer while it ingests?"""
    while True:
        began = time.monotonic()
        await get_json(server, "/api/dev/health")
        times.append(time.monotonic() - began)
        await asyncio.sleep(0.2)


async def ingest_with(
    bus: Devbus, paths: Callable[[int], str], subscribers: int, events: int, *, within: float
) -> dict[str, Any]:
    """ZeroMQ ingest while ``subscribers`` sinks on ``paths`` (matching none of it) wait, one sink taking all."""
    async with asyncio.timeout(WAIT):
        others = await open_sinks(bus.port, subscribers, path=paths)
        counter = await open_sinks(bus.port, 1, path="/api/dev/events?types=bench.tick", check_every=1)
    try:
        tally = Tally()
        tally.arm(counter, events)
        meter = Meter(bus)
        health_times: list[float] = []
        prober = asyncio.create_task(probe_health(bus, health_times))
        started = time.monotonic()
        try:
            async with asyncio.timeout(within):
                timing = await publish_zmq(bus.ingest or "", events)
                await tally.done.wait()
            received, elapsed = events, tally.last_at - timing["started"]
        except TimeoutError:  # far too slow: the rate so far says enough
            received, elapsed = max(0, counter[0].frames), time.monotonic() - started
        finally:
            prober.cancel()
        return {
            "events_per_s": round(received / elapsed),
            "elapsed_s": round(elapsed, 3),
            "received": received,
            "health_max_ms": round(max(health_times, default=0.0) * 1000, 1),
            **order_check(counter, events),
            **meter.stop(),
        }
    finally:
        close_sinks(others + counter)


async def scenario_filters(sizes: Sizes) -> dict[str, Any]:
    subscribers, events = sizes.filters
    loadgen.raise_fd_limit()
    runs: dict[str, dict[str, Any]] = {}
    filters: dict[str, Callable[[int], str]] = {
        "single": lambda i: "/api/dev/events?types=bench.f.*,other",
        "distinct": lambda i: f"/api/dev/events?types=bench.f{i}.*,other.{i}",
    }
    for name, paths in filters.items():
        bus = Devbus("--max-subscribers", str(subscribers + 10))
        try:
            if bus.ingest is None:
                return {"skipped": "this bus has no ZeroMQ ingest"}
            # Distinct filters get four times as long as one filter took: at half its rate they already fail.
            within = WAIT if name == "single" else max(30.0, 4 * runs["single"]["elapsed_s"])
            runs[name] = await ingest_with(bus, paths, subscribers, events, within=within)
        finally:
            bus.stop()
    single, distinct = runs["single"], runs["distinct"]
    result = {
        **distinct,
        "single": single,
        "single_events_per_s": single["events_per_s"],
        "ratio": round(distinct["events_per_s"] / single["events_per_s"], 2),
        "filters": subscribers,
    }
    result["correct"] = all_correct(single) and all_correct(distinct)
    result["met"] = result["correct"] and result["ratio"] >= 0.5
    return result


async def ingest_into_both(a: Devbus, b: Devbus, events: int) -> dict[str, Any]:
    """Send ``events`` over ZeroMQ to each bus at once; one subscriber on each must get all of both."""
    async with asyncio.timeout(WAIT):
        sinks = await open_sinks(a.port, 1, check_every=1) + await open_sinks(b.port, 1, check_every=1)
    try:
        tally = Tally()
        tally.arm(sinks, 2 * events)
        meters = Meter(a), Meter(b)
        async with asyncio.timeout(WAIT):
            timings = await asyncio.gather(publish_zmq(a.ingest or "", events), publish_zmq(b.ingest or "", events))
            await tally.done.wait()
        elapsed = tally.last_at - min(timing["started"] for timing in timings)
        used = [meter.stop() for meter in meters]
        return {
            "events_per_s": round(2 * events / elapsed),
            "elapsed_s": round(elapsed, 3),
            **order_check(sinks, 2 * events),
            "bus_cpu_s": round(sum(u["bus_cpu_s"] for u in used), 2),
            "bus_rss_mb": max(u["bus_rss_mb"] for u in used),
            "publisher_cpu_s": round(sum(timing.get("cpu", 0.0) for timing in timings), 2),
        }
    finally:
        close_sinks(sinks)


async def bare_redis_ingest(each: int, *, history: int) -> dict[str, Any]:
    """Two redis-py pipelines XADDing ``each`` entries at once into one stream, as two buses' appends would."""
    import redis.asyncio  # only with a Redis store, which needs the extra

    assert Devbus.store is not None
    key = f"bench-bare-{time.time_ns()}"
    timings = await asyncio.gather(
        *(in_child(loadgen.redis_xadd, Devbus.store, key, each, history=history) for _ in range(2))
    )
    elapsed = max(t["finished"] for t in timings) - min(t["started"] for t in timings)
    client = redis.asyncio.Redis.from_url(Devbus.store)
    try:
        await client.delete(key)
    finally:
        await client.aclose()
    return {
        "events_per_s": round(2 * each / elapsed),
        "elapsed_s": round(elapsed, 3),
        "hiredis": all(t["hiredis"] for t in timings),
        "publisher_cpu_s": round(sum(t["cpu"] for t in timings), 2),
    }


async def scenario_cluster(sizes: Sizes) -> dict[str, Any]:
    subscribers, events, each = sizes.cluster
    if not is_shared(Devbus.store):
        return {"skipped": "needs a store that several buses share: --store redis://..."}
    options = ("--max-subscribers", str(subscribers + 10))
    alone = Devbus(*options, store="memory")
    try:
        memory = await fanout(alone, subscribers, events, lambda: publish_zmq(alone.ingest or "", events))
    finally:
        alone.stop()
    key = f"bench-cluster-{time.time_ns()}"
    # History as large as the burst: a bus whose reader falls further behind than --history
    # (two buses writing flat out on two shared cores) skips what was trimmed (README, Redis).
    history = ("--history", str(2 * each + events))
    a, b = Devbus(*options, *history, shared_key=key), Devbus(*options, *history, shared_key=key)
    try:
        # What one bus takes in, the other fans out: through the store.
        across = await fanout(b, subscribers, events, lambda: publish_zmq(a.ingest or "", events))
        ingest = await ingest_into_both(a, b, each)
    finally:
        a.stop()
        b.stop()
    bare = await bare_redis_ingest(each, history=2 * each + events)
    result = {
        **ingest,
        "bare_per_s": bare["events_per_s"],
        "bare_ratio": round(ingest["events_per_s"] / bare["events_per_s"], 2),
        "bare": bare,
        "fanout_per_s": across["deliveries_per_s"],
        "memory_fanout_per_s": memory["deliveries_per_s"],
        "fanout_ratio": round(across["deliveries_per_s"] / memory["deliveries_per_s"], 2),
        "fanout": across,
        "memory": memory,
    }
    result["correct"] = all_correct(ingest) and all_correct(across) and all_correct(memory)
    result["met"] = result["correct"] and result["events_per_s"] >= 50_000 and result["fanout_ratio"] >= 0.8
    return result


SCENARIOS: dict[str, tuple[Callable[[Sizes], Awaitable[dict[str, Any]]], str]] = {
    "burst": (
        scenario_burst,
        "1,000 subs x 5,000 events over ZeroMQ: all in order, >= 2,000,000 deliveries/s and >= 0.9x the bare "
        "stack's fan-out (aiohttp + pyzmq, encode once, one write per subscriber) in the same run",
    ),
    "post": (
        scenario_post,
        "single-event POST /webhook on 32 busy connections (memory store): >= 0.9x the requests/s of a bare "
        "aiohttp JSON handler in the same run; p99 of both",
    ),
    "http-fanout": (scenario_http_fanout, "1,000 subs x 2,000 POSTs, 8 in flight: >= 150,000 deliveries/s, >= 5x ref"),
    "latency": (scenario_latency, "100 subs, 500 events/s over ZeroMQ for 10 s: p99 <= 5 ms"),
    "idle": (scenario_idle, "10,000 idle subscribers: all held, <= 15 KB bus RSS each"),
    "slow": (scenario_slow, "1 stalled + 100 fast, 100,000 x 1 KB: evicted, RSS growth <= 64 MB, fast get all"),
    "ingest": (
        scenario_ingest,
        "ZeroMQ ingest, 1 subscriber: acknowledged (a raw DEALER) >= 100,000 events/s and >= 0.9x fire-and-forget "
        "(a raw XPUB) in the same run, none lost; a Publisher's rate reported beside them",
    ),
    "replay": (
        scenario_replay,
        "64 MiB history; 100 stalled resumes from the oldest id: RSS +<= 512 MB, back within 10% 5 s after "
        "eviction; 100 reading resumes: every event, in order",
    ),
    "filters": (scenario_filters, "1,000 subs with distinct filters: ZeroMQ ingest >= 0.5x one shared filter"),
    "cluster": (
        scenario_cluster,
        "2 buses on one Redis: ZeroMQ ingest into both >= 50,000 events/s (its ratio to two bare redis-py XADD "
        "pipelines into one stream in the same run reported); 1,000 subs x 5,000 events sent to the other bus "
        ">= 0.8x the memory store's fan-out",
    ),
    "restart": (
        scenario_restart,
        "a Publisher at full speed, its SQLite bus killed (SIGKILL) and restarted 3 times: lost/duplicated = 0/0",
    ),
}


async def run_once(name: str, sizes: Sizes) -> dict[str, Any]:
    scenario, target = SCENARIOS[name]
    print(f"running {name}: {target}", file=sys.stderr, flush=True)
    began = time.monotonic()
    try:
        result = await scenario(sizes)
        if sizes is QUICK and "met" in result:
            result["met"] = None  # small sizes say nothing about the targets
    except Exception as exc:  # one failed scenario must not hide the others' numbers
        result = {"error": f"{type(exc).__name__}: {exc}", "correct": False, "met": False}
    result["target"] = target
    result["wall_s"] = round(time.monotonic() - began, 1)
    return result


async def run(names: list[str], sizes: Sizes, *, repeat: int) -> dict[str, dict[str, Any]]:
    """Run each scenario ``repeat`` times (rounds interleaved) and keep every run's numbers."""
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in names}
    for _ in range(repeat):
        for name in names:
            runs[name].append(await run_once(name, sizes))
    return {name: report.median_run(name, results) for name, results in runs.items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="small sizes: a smoke test, not a measurement")
    parser.add_argument("--scenario", action="append", choices=list(SCENARIOS), help="run only these (repeatable)")
    parser.add_argument("--out", type=Path, help="where to write the JSON results")
    parser.add_argument("--repeat", type=int, default=1, help="run each scenario N times; report the median run")
    parser.add_argument("--markdown", action="store_true", help="print the table as Markdown (for the README)")
    parser.add_argument("--profile", type=Path, help="run the bus under cProfile, writing its stats to this file")
    parser.add_argument(
        "--generator",
        choices=["wrk", "aiohttp"],
        help="what drives the post scenario (default: wrk if installed, else an aiohttp client)",
    )
    parser.add_argument(
        "--store",
        help="passed to `devbus run --store` (default: the bus's own, memory); sqlite:PATH gives each bus "
        "a fresh file next to PATH (sqlite: alone, in a temporary folder)",
    )
    args = parser.parse_args(argv)
    Devbus.profile = args.profile
    if args.generator == "wrk" and hammer.WRK is None:
        parser.error("--generator wrk: wrk is not installed (apt-get install wrk)")
    global POST_GENERATOR
    POST_GENERATOR = args.generator
    Devbus.store = args.store
    names = args.scenario or list(SCENARIOS)
    sizes = QUICK if args.quick else FULL
    results = asyncio.run(run(names, sizes, repeat=args.repeat))
    print(f"store: {args.store or 'memory'}")
    print(report.table(results, markdown=args.markdown))
    out = args.out or ROOT / "bench-results" / time.strftime("bench-%Y%m%d-%H%M%S.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    document = {
        "machine": report.machine(),
        "quick": args.quick,
        "repeat": args.repeat,
        "store": args.store,
        "sizes": sizes.__dict__,
        "scenarios": results,
    }
    out.write_text(json.dumps(document, indent=2) + "\n")
    print(f"results written to {out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
