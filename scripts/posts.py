"""The benchmark's post scenario: single-event POSTs on busy connections, devbus beside a bare aiohttp handler.

Both servers run side by side and take turns, a round each, so that a change in the
machine's load falls on both; the ratio is of their totals over every round. Beside the
rates it reports the CPU each request cost each server (from ``/proc``), which load
disturbs less, and the p99 latency. wrk drives the requests where installed, else an
aiohttp client in a child process (``hammer.py``).
"""

from __future__ import annotations

import os
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
import hammer
import loadgen
from servers import Bare, Devbus, Server

InChild = Callable[..., Awaitable[dict[str, Any]]]


async def _stored(bus: Devbus) -> int:
    """How many events ``bus`` has taken, by its own count."""
    url = f"http://127.0.0.1:{bus.port}/api/dev/health"
    async with aiohttp.ClientSession() as session, session.get(url) as reply:
        return int((await reply.json())["events"])


async def _load(server: Server, connections: int, seconds: int, generator: str, in_child: InChild) -> dict[str, Any]:
    """Single-event POSTs to /webhook on ``connections`` connections for ``seconds``, with ``generator``."""
    url = f"http://127.0.0.1:{server.port}/api/dev/webhook"
    body = loadgen.webhook_body()(0)
    if generator == "wrk":
        return await hammer.wrk_posts(url, body, connections=connections, seconds=seconds)
    return await in_child(hammer.aiohttp_posts, url, body, connections=connections, seconds=seconds)


async def _round(server: Server, connections: int, seconds: int, generator: str, in_child: InChild) -> dict[str, Any]:
    """One measured round of :func:`_load`, with the server's CPU and what devbus stored meanwhile."""
    stored = await _stored(server) if isinstance(server, Devbus) else 0
    cpu = server.probe.cpu()
    load = await _load(server, connections, seconds, generator, in_child)
    load["bus_cpu_s"] = server.probe.cpu() - cpu
    load["gen_cpu_s"] = load.pop("cpu")
    load["bus_rss_mb"] = round(server.probe.rss() / 2**20, 1)
    if isinstance(server, Devbus):
        # wrk stops with up to one request per connection unanswered; the bus may have stored those.
        load["stored"] = await _stored(server) - stored
    return load


def _totals(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    """The rounds of one server added up: requests/s over all of them, the worst p99."""
    requests = sum(r["requests"] for r in rounds)
    seconds = sum(r["seconds"] for r in rounds)
    bus_cpu = sum(r["bus_cpu_s"] for r in rounds)
    return {
        "requests_per_s": round(requests / seconds),
        "requests": requests,
        "p50_ms": max(r["p50_ms"] for r in rounds),
        "p99_ms": max(r["p99_ms"] for r in rounds),
        "non_2xx": sum(r["non_2xx"] for r in rounds),
        "errors": sum(r["errors"] for r in rounds),
        "cpu_us_per_request": round(bus_cpu / max(requests, 1) * 1e6, 1),
        "bus_cpu_s": round(bus_cpu, 2),
        "gen_cpu_s": round(sum(r["gen_cpu_s"] for r in rounds), 2),
        "bus_rss_mb": max(r["bus_rss_mb"] for r in rounds),
        "rounds": rounds,
    }


async def scenario_post(
    connections: int, seconds: int, rounds: int, *, generator: str | None, in_child: InChild
) -> dict[str, Any]:
    """``rounds`` rounds of ``seconds`` each for devbus (memory store) and the bare handler, in turn.

    ``generator`` is "wrk" or "aiohttp" (None: wrk if installed); ``in_child`` runs the
    aiohttp client in a child process.
    """
    generator = generator or ("wrk" if hammer.WRK else "aiohttp")
    servers: dict[str, Server] = {}
    try:
        servers["bare"] = Bare("post")
        servers["devbus"] = Devbus(store="memory")
        for server in servers.values():
            await _load(server, connections, 1, generator, in_child)  # warm up: connections open, code paths run
        runs: dict[str, list[dict[str, Any]]] = {name: [] for name in servers}
        for _ in range(rounds):
            for name, server in servers.items():
                runs[name].append(await _round(server, connections, seconds, generator, in_child))
    finally:
        for server in servers.values():
            server.stop()
    result = _totals(runs["devbus"])
    result["bare"] = _totals(runs["bare"])
    result["generator"] = generator
    result["connections"] = connections
    result["ratio"] = round(result["requests_per_s"] / result["bare"]["requests_per_s"], 2)
    # The CPU each request cost, bare over devbus: steadier than the rates on a shared machine.
    result["cpu_ratio"] = round(result["bare"]["cpu_us_per_request"] / result["cpu_us_per_request"], 2)
    result["load"] = round(os.getloadavg()[0], 2)
    stored = sum(r["stored"] for r in runs["devbus"])
    answered = result["requests"]
    result["stored"] = stored
    result["correct"] = (
        result["non_2xx"] == result["errors"] == result["bare"]["non_2xx"] == result["bare"]["errors"] == 0
        and answered <= stored <= answered + connections * rounds
        and answered > 0
    )
    result["met"] = result["correct"] and result["ratio"] >= 0.9
    return result
