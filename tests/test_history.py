"""GET /history: the newest (or the after-`since`) retained events, read and written a page at a time."""

from __future__ import annotations

from support import BusFactory, Client

from devbus.bus.keys import DISPATCHER
from devbus.bus.pages import PAGE_EVENTS
from devbus.envelope import Draft

EVENTS = PAGE_EVENTS * 2 + 500  # the answers below span pages


async def fill(client: Client) -> list[str]:
    drafts = [Draft("odd" if n % 2 else "even", {"n": n}, "test") for n in range(EVENTS)]
    return [r.id for r in await client.app[DISPATCHER].publish(drafts)]


async def numbers(client: Client, query: str) -> list[int]:
    response = await client.get(f"/api/dev/history?{query}")
    assert response.status == 200, await response.text()
    assert response.content_type == "application/json"
    return [event["data"]["n"] for event in (await response.json())["events"]]


async def test_the_newest_matching_events_come_oldest_first_across_pages(make_bus: BusFactory) -> None:
    client = await make_bus(history=EVENTS)
    await fill(client)
    assert await numbers(client, "types=odd&limit=1100") == list(range(EVENTS - 2199, EVENTS, 2))
    assert await numbers(client, f"limit={EVENTS}") == list(range(EVENTS))
    assert await numbers(client, "types=none") == []


async def test_events_after_since_come_oldest_first_across_pages(make_bus: BusFactory) -> None:
    client = await make_bus(history=EVENTS)
    ids = await fill(client)
    assert await numbers(client, f"since={ids[10]}&types=even&limit=1200") == list(range(12, 12 + 2400, 2))
    assert await numbers(client, f"since={ids[-1]}") == []


async def test_an_empty_bus_has_an_empty_history(bus: Client) -> None:
    assert await numbers(bus, "") == []
