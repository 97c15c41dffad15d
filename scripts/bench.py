"""Benchmark devbus against its targets and against the hand-rolled pattern it replaces.

    python scripts/bench.py                 # every scenario at full size (a few minutes)
    python scripts/bench.py --quick         # small sizes, a smoke test
    python scripts/bench.py --scenario http-fanout --scenario idle

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
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import loadgen
import report
from loadgen import Sink, Tally, close_sinks, cpu_self, open_sinks, stalled_client
from servers import ROOT, Devbus, Reference, Server

WAIT = 300.0  # seconds any single phase may take before the scenario fails


@dataclass(frozen=True)
class Sizes:
    """How big each scenario is."""

    burst: tuple[int, int]  # subscribers, events
    http: tuple[int, int, int]  # subscribers, events, in flight
    http_reference_events: int
    latency: tuple[int, int, float]  # subscribers, events/s, seconds
    idle: int
    slow: tuple[int, int, int]  # fast subscribers, events, bytes per event
    ingest: int


FULL = Sizes(
    burst=(1000, 5000),
    http=(1000, 2000, 8),
    http_reference_events=300,
    latency=(100, 500, 10.0),
    idle=10_000,
    slow=(100, 100_000, 1024),
    ingest=300_000,
)
QUICK = Sizes(
    burst=(50, 500),
    http=(50, 200, 8),
    http_reference_events=100,
    latency=(10, 200, 1.0),
    idle=200,
    slow=(10, 20_000, 1024),
    ingest=5_000,
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
    finally:
        await asyncio.to_thread(process.join, 30)
        receive.close()


def order_check(sinks: list[Sink], events: int) -> dict[str, Any]:
    """Every sink got exactly ``events``; the checked ones got them in id order."""
    checked = [s for s in sinks if s.check_ids]
    return {
        "complete": sum(1 for s in sinks if s.frames == events),
        "subscribers": len(sinks),
        "checked_in_order": sum(1 for s in checked if s.out_of_order == 0 and s.last_seq > 0),
        "checked": len(checked),
    }


def all_correct(check: dict[str, Any]) -> bool:
    return check["complete"] == check["subscribers"] and check["checked_in_order"] == check["checked"]


async def fanout(
    server: Server, subscribers: int, events: int, publish: Callable[[], Awaitable[dict[str, float]]]
) -> dict[str, Any]:
    """Connect sinks, publish, wait until every sink has every event; report the rate."""
    # The reference sends no ids, so only devbus streams can be checked for order.
    check_every = 20 if isinstance(server, Devbus) else 0
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


def http_posts(server: Server, events: int, in_flight: int) -> Awaitable[dict[str, float]]:
    url = f"http://127.0.0.1:{server.port}/api/dev/webhook"
    return in_child(loadgen.http_publish, url, events, in_flight=in_flight)


async def scenario_burst(sizes: Sizes) -> dict[str, Any]:
    subscribers, events = sizes.burst
    bus = Devbus("--max-subscribers", str(subscribers + 10))
    try:
        if bus.ingest is None:
            return {"skipped": "this bus has no ZeroMQ ingest"}
        result = await fanout(bus, subscribers, events, lambda: publish_zmq(bus.ingest or "", events))
    finally:
        bus.stop()
    result["correct"] = all_correct(result)
    result["met"] = result["correct"] and result["deliveries_per_s"] >= 2_000_000
    return result


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
    async with aiohttp.ClientSession() as session, session.get(f"http://127.0.0.1:{server.port}/api/dev/health") as r:
        return dict(await r.json())


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


async def scenario_ingest(sizes: Sizes) -> dict[str, Any]:
    events = sizes.ingest
    bus = Devbus()
    try:
        if bus.ingest is None:
            return {"skipped": "this bus has no ZeroMQ ingest"}
        result = await fanout(bus, 1, events, lambda: publish_zmq(bus.ingest or "", events))
    finally:
        bus.stop()
    result["events_per_s"] = result.pop("deliveries_per_s")
    result["correct"] = all_correct(result)
    result["met"] = result["correct"] and result["events_per_s"] >= 100_000
    return result


SCENARIOS: dict[str, tuple[Callable[[Sizes], Awaitable[dict[str, Any]]], str]] = {
    "burst": (scenario_burst, "1,000 subs x 5,000 events over ZeroMQ: all in order, >= 2,000,000 deliveries/s"),
    "http-fanout": (scenario_http_fanout, "1,000 subs x 2,000 POSTs, 8 in flight: >= 150,000 deliveries/s, >= 5x ref"),
    "latency": (scenario_latency, "100 subs, 500 events/s over ZeroMQ for 10 s: p99 <= 5 ms"),
    "idle": (scenario_idle, "10,000 idle subscribers: all held, <= 15 KB bus RSS each"),
    "slow": (scenario_slow, "1 stalled + 100 fast, 100,000 x 1 KB: evicted, RSS growth <= 64 MB, fast get all"),
    "ingest": (scenario_ingest, "ZeroMQ ingest, 1 subscriber: >= 100,000 events/s, none lost"),
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
    args = parser.parse_args(argv)
    Devbus.profile = args.profile
    names = args.scenario or list(SCENARIOS)
    sizes = QUICK if args.quick else FULL
    results = asyncio.run(run(names, sizes, repeat=args.repeat))
    print(report.table(results, markdown=args.markdown))
    out = args.out or ROOT / "bench-results" / time.strftime("bench-%Y%m%d-%H%M%S.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    document = {
        "machine": report.machine(),
        "quick": args.quick,
        "repeat": args.repeat,
        "sizes": sizes.__dict__,
        "scenarios": results,
    }
    out.write_text(json.dumps(document, indent=2) + "\n")
    print(f"results written to {out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
