"""The answers to POST /webhook and /trigger say how many SSE subscribers the event reached, on every store."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from support import BusFactory, Client, open_stream

from devbus.bus.inputs.reach import MAX_KEPT, ReachCounts
from devbus.bus.record import Record


@pytest.fixture(params=["memory", "sqlite", "redis"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """Each store: the memory and SQLite ones deliver before they answer, a Redis one from its read loop."""
    if request.param == "redis":
        url: str = request.getfixturevalue("redis_server").url
        return url
    return f"sqlite:{tmp_path / 'events.db'}" if request.param == "sqlite" else "memory"


async def test_each_answer_counts_the_subscribers_its_own_event_reached(make_bus: BusFactory, store: str) -> None:
    """Answers that wait together each get their own event's count, whichever store answers when."""
    client: Client = await make_bus(store=store)
    await open_stream(client)
    await open_stream(client, "/api/dev/events?types=agent.*")

    async def send(path: str, event_type: str) -> tuple[str, int]:
        response = await client.post(f"/api/dev/{path}", json={"event_type": event_type, "data": {}})
        assert response.status == 200, await response.text()
        answer = await response.json()
        return event_type, answer["subscribers"] if path == "webhook" else answer["subscribers_notified"]

    # Many at once, so that counts of other events are reported while each answer waits.
    sends = [send(path, event_type) for path in ("webhook", "trigger") for event_type in ("agent.a", "rental.b") * 10]
    answers = await asyncio.gather(*sends)
    assert {event_type: count for event_type, count in answers} == {"agent.a": 2, "rental.b": 1}
    assert len(set(answers)) == 2  # every answer of a type agrees


def record(n: int) -> Record:
    return Record(f"r-{n}", "t", b"{}")


def test_counts_are_kept_only_while_an_answer_waits_and_are_those_reported() -> None:
    reach = ReachCounts(now=lambda event_type: 99)
    reach([record(1)], [3])  # nobody waits: not kept
    with reach.waiting():
        assert reach.of(record(1)) == 99  # not reported while waiting: the subscribers it would reach now
        reach([record(2), record(3)], [5, 0])
        assert (reach.of(record(3)), reach.of(record(2))) == (0, 5)
        reach([record(4)], [7])
    with reach.waiting():
        assert reach.of(record(4)) == 99  # forgotten once nobody waited


def test_counts_kept_while_waiting_are_bounded() -> None:
    reach = ReachCounts(now=lambda event_type: -1)
    with reach.waiting():
        reach([record(0)], [1])
        reach([record(n) for n in range(1, MAX_KEPT + 1)], [2] * MAX_KEPT)
        assert reach.of(record(0)) == -1  # pushed out by a burst of others
        assert reach.of(record(1)) == 2
