"""Wait for an in-process bus to have accepted a number of events, without polling."""

from __future__ import annotations

import asyncio
from typing import Any

from aiohttp.test_utils import TestClient
from conftest import WAIT

from devbus.keys import DISPATCHER


async def wait_for_total(client: TestClient[Any, Any], count: int, *, within: float = WAIT) -> None:
    """Return once the bus has accepted ``count`` events in all; fail after ``within`` seconds."""
    dispatcher = client.app[DISPATCHER]
    reached = asyncio.Event()

    def check(_: object) -> None:
        if dispatcher.total >= count:
            reached.set()

    remove = dispatcher.add_listener(check)
    try:
        check(None)
        async with asyncio.timeout(within):
            await reached.wait()
    finally:
        remove()


async def history(client: TestClient[Any, Any], *, count: int, token: str | None = None) -> list[dict[str, Any]]:
    """Wait until the bus has ``count`` events, then return its history (up to 10,000)."""
    await wait_for_total(client, count)
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    response = await client.get("/api/dev/history", params={"limit": "10000"}, headers=headers)
    assert response.status == 200, await response.text()
    events: list[dict[str, Any]] = (await response.json())["events"]
    return events
