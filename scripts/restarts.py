"""The benchmark's restart scenario: a Publisher at full speed while its SQLite bus is killed and restarted.

The publisher (a child process) numbers its events and notes which ones ``emit``
dropped (the bus away longer than ``hold`` events). The bus is killed with SIGKILL
each time it has taken a share of the stream, and started again on the same file
and ingest address. At the end the store must hold every event not dropped exactly
once, in order: lost and duplicated both 0. The rate is what the store holds over
the whole run, restarts included.
"""

from __future__ import annotations

import asyncio
import shutil
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
from servers import Devbus

WAIT = 300.0


async def _get(bus: Devbus, path: str) -> dict[str, Any]:
    async with aiohttp.ClientSession() as session, session.get(f"http://127.0.0.1:{bus.port}{path}") as reply:
        result: dict[str, Any] = await reply.json()
        return result


async def _taken(bus: Devbus, count: int) -> None:
    """Wait until ``bus`` (this process of it) has taken ``count`` events."""
    async with asyncio.timeout(WAIT):
        while (await _get(bus, "/api/dev/health"))["events"] < count:  # noqa: ASYNC110 - over HTTP
            await asyncio.sleep(0.02)  # polling the bus's count, bounded by WAIT


async def scenario_restart(
    count: int, kills: int, publish: Callable[[str, int], Awaitable[dict[str, Any]]]
) -> dict[str, Any]:
    """Publish ``count`` numbered events with ``publish`` while the bus is killed ``kills`` times."""
    folder = Path(tempfile.mkdtemp(prefix="devbus-restart-"))
    database = folder / "restart.sqlite"
    options = ("--history", str(count + 1000))
    bus = Devbus(*options, keep=database)
    try:
        ingest = bus.ingest or ""
        publishing = asyncio.ensure_future(publish(ingest, count))
        began = time.monotonic()
        for _ in range(kills):
            await _taken(bus, min(20_000, count // (kills + 2)))
            bus.kill()
            bus = Devbus(*options, "--ingest", ingest, keep=database)
        report = await publishing
        elapsed = time.monotonic() - began
        page = await _get(bus, f"/api/dev/history?types=bench.tick&limit={count + 1000}")
    finally:
        bus.stop()
        shutil.rmtree(folder, ignore_errors=True)
    stored = [event["data"]["n"] for event in page["events"]]
    dropped = set(report["dropped"])
    lost = set(range(count)) - dropped - set(stored)
    result = {
        "events_per_s": round(len(stored) / elapsed),
        "kills": kills,
        "emitted": count,
        "stored": len(stored),
        "dropped": len(dropped),
        "lost": len(lost),
        "duplicated": len(stored) - len(set(stored)),
        "in_order": stored == sorted(stored),
        "undelivered": report["undelivered"],
    }
    result["correct"] = result["lost"] == 0 and result["duplicated"] == 0 and result["in_order"]
    result["met"] = result["correct"]
    return result
