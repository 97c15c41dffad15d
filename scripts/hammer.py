"""Keep N connections busy with single-event POSTs for a while: wrk where installed, else aiohttp.

wrk (C, one thread) costs the machine a fraction of what the server does, so on two
cores the server is what is measured. The fallback, an aiohttp client in a child
process, needs about as much CPU per request as the server it drives: its numbers
say more about the generator, but both servers of one run get the same one, so their
ratio still holds. Either way the result counts requests answered within the time,
those answered with another status than 2xx, connection errors, and the latency
percentiles.
"""

from __future__ import annotations

import asyncio
import json
import os
import resource
import shutil
import tempfile
import time
from typing import Any

import aiohttp

__all__ = ["WRK", "aiohttp_posts", "wrk_posts"]

WRK = shutil.which("wrk")

# wrk's Lua hooks: one fixed request, and the summary as one JSON line at the end.
_LUA = """
wrk.method = "POST"
wrk.body = %s
wrk.headers["Content-Type"] = "application/json"
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    '\\n{"requests":%%d,"duration_us":%%d,"non_2xx":%%d,"errors":%%d,"p50_us":%%d,"p99_us":%%d}\\n',
    summary.requests, summary.duration, e.status, e.connect + e.read + e.write + e.timeout,
    latency:percentile(50), latency:percentile(99)))
end
"""


def _summary(requests: int, seconds: float, non_2xx: int, errors: int, p50_us: float, p99_us: float) -> dict[str, Any]:
    return {
        "requests": requests,
        "requests_per_s": round(requests / seconds),
        "seconds": round(seconds, 2),
        "non_2xx": non_2xx,
        "errors": errors,
        "p50_ms": round(p50_us / 1000, 2),
        "p99_ms": round(p99_us / 1000, 2),
    }


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


async def wrk_posts(url: str, body: bytes, *, connections: int, seconds: int) -> dict[str, Any]:
    """POST ``body`` to ``url`` over ``connections`` connections for ``seconds`` with wrk (one thread)."""
    assert WRK is not None
    with tempfile.NamedTemporaryFile("w", suffix=".lua") as script:
        script.write(_LUA % json.dumps(body.decode()))
        script.flush()
        cpu = _children_cpu()
        process = await asyncio.create_subprocess_exec(
            WRK,
            "-t1",
            f"-c{connections}",
            f"-d{seconds}s",
            "--timeout",
            "10s",
            "-s",
            script.name,
            url,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        out, err = await process.communicate()
    if process.returncode != 0:
        raise RuntimeError(f"wrk failed ({process.returncode}): {err.decode()[-500:]}")
    found = json.loads(out.decode().strip().splitlines()[-1])
    result = _summary(
        found["requests"],
        found["duration_us"] / 1e6,
        found["non_2xx"],
        found["errors"],
        found["p50_us"],
        found["p99_us"],
    )
    return result | {"generator": "wrk", "cpu": _children_cpu() - cpu}


def aiohttp_posts(url: str, body: bytes, *, connections: int, seconds: float, report: Any = None) -> dict[str, Any]:
    """What :func:`wrk_posts` does, with an aiohttp client (in a child process: see bench.in_child)."""
    latencies: list[int] = []
    counts = {"requests": 0, "non_2xx": 0, "errors": 0}
    headers = {"Content-Type": "application/json"}

    async def worker(session: aiohttp.ClientSession, deadline: float) -> None:
        while time.monotonic() < deadline:
            began = time.monotonic_ns()
            try:
                async with session.post(url, data=body, headers=headers) as response:
                    await response.read()
                    counts["non_2xx"] += not 200 <= response.status < 300
            except aiohttp.ClientError:
                counts["errors"] += 1
                continue
            latencies.append(time.monotonic_ns() - began)
            counts["requests"] += 1

    async def run() -> float:
        connector = aiohttp.TCPConnector(limit=connections)
        async with aiohttp.ClientSession(connector=connector) as session:
            started = time.monotonic()
            await asyncio.gather(*(worker(session, started + seconds) for _ in range(connections)))
            return time.monotonic() - started

    cpu = os.times()
    elapsed = asyncio.run(run())
    used = os.times()
    latencies.sort()

    def percentile(fraction: float) -> float:
        return latencies[min(len(latencies) - 1, int(fraction * len(latencies)))] / 1000 if latencies else 0.0

    result = _summary(
        counts["requests"], elapsed, counts["non_2xx"], counts["errors"], percentile(0.5), percentile(0.99)
    )
    result |= {"generator": "aiohttp", "cpu": used.user + used.system - cpu.user - cpu.system}
    if report is not None:
        report.send(result)
    return result
