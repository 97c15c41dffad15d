"""The benchmark's report: the median run of each scenario, as a text or Markdown table."""

from __future__ import annotations

import multiprocessing
import platform
from pathlib import Path
from typing import Any

# The number each scenario is judged by, and whether bigger is better.
KEY = {
    "burst": ("deliveries_per_s", True),
    "post": ("ratio", True),
    "http-fanout": ("deliveries_per_s", True),
    "latency": ("p99_ms", False),
    "idle": ("kb_per_subscriber", False),
    "slow": ("rss_growth_mb", False),
    "ingest": ("events_per_s", True),
    "replay": ("stalled_rss_growth_mb", False),
    "filters": ("ratio", True),
    "cluster": ("events_per_s", True),
    "restart": ("lost", False),
}


def median_run(name: str, runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The run whose key number is the median (a failed run counts as the worst); all runs kept in ``runs``."""
    key, bigger_is_better = KEY[name]
    worst = float("-inf") if bigger_is_better else float("inf")
    ordered = sorted(runs, key=lambda run: run.get(key, worst))
    chosen = dict(ordered[len(ordered) // 2])
    if len(runs) > 1:
        chosen["runs"] = runs
        chosen["correct"] = all(run.get("correct") for run in runs)
    return chosen


def headline(name: str, result: dict[str, Any]) -> str:
    if "skipped" in result:
        return f"skipped: {result['skipped']}"
    if "error" in result:
        return f"error: {result['error']}"
    complete = f"{result.get('complete', 0)}/{result.get('subscribers', 0)} complete"
    if name in ("burst", "http-fanout"):
        return f"{result['deliveries_per_s']:,} deliveries/s; {complete}"
    if name == "post":
        return (
            f"{result['requests_per_s']:,} requests/s, p99 {result['p99_ms']} ms, "
            f"{result['cpu_us_per_request']} µs CPU each ({result['generator']}, {result['connections']} connections)"
        )
    if name == "latency":
        return f"p50 {result['p50_ms']} ms, p99 {result['p99_ms']} ms; {complete}"
    if name == "idle":
        return f"{result['held']:,} held; {result['kb_per_subscriber']} KB/subscriber"
    if name == "slow":
        return f"evicted {result['evicted']}; RSS +{result['rss_growth_mb']} MB; {complete}"
    if name == "replay":
        stalled = (
            f"{result['stalled_opened']} stalled: RSS +{result['stalled_rss_growth_mb']} MB, "
            f"{'evicted' if result['evicted_by_bus'] else 'NOT evicted'}, "
            f"5 s later {result['rss_after_evicted_ratio']}x the start"
        )
        if "readers_runaway" in result:
            return f"{stalled}; readers: {result['readers_runaway']}"
        readers = f"{result['readers_in_order']}/{result['readers']} readers"
        return f"{stalled}; {readers} got all {result['retained'] - 1:,} in order"
    if name == "filters":
        return (
            f"{result['events_per_s']:,} events/s with {result['filters']:,} distinct filters, "
            f"{result['single_events_per_s']:,} with one ({result['ratio']}x); /health max {result['health_max_ms']} ms"
        )
    if name == "cluster":
        return (
            f"ingest into 2 buses {result['events_per_s']:,} events/s, {result['bare_ratio']}x bare redis-py's "
            f"{result['bare_per_s']:,}; fan-out across buses "
            f"{result['fanout_per_s']:,} deliveries/s, {result['fanout_ratio']}x memory's "
            f"{result['memory_fanout_per_s']:,}; {complete}"
        )
    if name == "ingest":
        return (
            f"{result['events_per_s']:,} events/s acknowledged, {result['fire_and_forget_per_s']:,} "
            f"fire-and-forget ({result['ratio']}x), {result['publisher_per_s']:,} from a Publisher; {complete}"
        )
    if name == "restart":
        return (
            f"lost/duplicated {result['lost']}/{result['duplicated']} over {result['kills']} kills; "
            f"{result['stored']:,} stored, {result['dropped']:,} dropped while the bus was away (counted)"
        )
    return f"{result['events_per_s']:,} events/s; {complete}"


def reference_cell(name: str, result: dict[str, Any]) -> str:
    bare = result.get("bare")
    if name == "post" and bare:
        return (
            f"bare aiohttp {bare['requests_per_s']:,} requests/s, p99 {bare['p99_ms']} ms, "
            f"{bare['cpu_us_per_request']} µs CPU each; devbus {result['ratio']}x the rate, "
            f"{result['cpu_ratio']}x the CPU efficiency (load {result['load']})"
        )
    if name == "burst" and bare:
        return (
            f"bare aiohttp + pyzmq {bare['deliveries_per_s']:,} deliveries/s, {bare['bus_cpu_s']} s CPU; "
            f"devbus {result['ratio']}x the rate, {result['cpu_ratio']}x the CPU efficiency"
        )
    reference = result.get("reference")
    if not reference:
        return ""
    if name == "idle":
        return f"{reference['kb_per_subscriber']} KB/subscriber; devbus uses {result['ratio']}x less"
    return f"{reference['deliveries_per_s']:,} deliveries/s; devbus {result['ratio']}x"


def _yes_no(value: bool | None) -> str:
    return "-" if value is None else "yes" if value else "NO"


def table(results: dict[str, dict[str, Any]], *, markdown: bool = False) -> str:
    """One row per scenario: what devbus did, the reference, correctness, targets, CPU and memory."""
    rows = [("scenario", "devbus", "reference", "correct", "target met", "bus CPU s", "gen CPU s", "bus RSS MB")]
    for name, result in results.items():
        rows.append(
            (
                name,
                headline(name, result),
                reference_cell(name, result),
                _yes_no(result.get("correct")),
                _yes_no(result.get("met")),
                str(result.get("bus_cpu_s", "")),
                str(result.get("gen_cpu_s", "")),
                str(result.get("bus_rss_mb", "")),
            )
        )
    if markdown:
        lines = ["| " + " | ".join(row) + " |" for row in rows]
        lines.insert(1, "|" + " --- |" * len(rows[0]))
        return "\n".join(lines)
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)) for row in rows]
    lines.insert(1, "  ".join("-" * width for width in widths))
    return "\n".join(lines)


def machine() -> dict[str, Any]:
    """The CPU count and model, and the Python version, for the report."""
    model = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if "model name" in line
        ),
        platform.processor(),
    )
    return {"cpus": multiprocessing.cpu_count(), "cpu_model": model, "python": platform.python_version()}
