"""POST with an Idempotency-Key: the same key twice stores one event and answers the same ids."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient
from support import BusFactory, history

Client = TestClient[Any, Any]
EVENT = {"event_type": "order.placed", "data": {"order": 42}}


async def post(client: Client, path: str, body: Any, key: str | None = None, **headers: str) -> Any:
    if key is not None:
        headers["Idempotency-Key"] = key
    return await client.post(f"/api/dev/{path}", json=body, headers=headers)


@pytest.mark.parametrize("path", ["webhook", "trigger"])
async def test_the_same_key_twice_stores_one_event_and_answers_the_same_id(bus: Client, path: str) -> None:
    first = await post(bus, path, EVENT, key="order-42-placed")
    again = await post(bus, path, EVENT, key="order-42-placed")
    assert first.status == again.status == 200
    assert await again.json() == await first.json()
    assert "Idempotent-Replayed" not in first.headers
    assert again.headers["Idempotent-Replayed"] == "true"
    [event] = await history(bus, count=1)
    assert event["id"] == (await first.json())["id"]


async def test_a_batch_with_a_key_is_stored_once(bus: Client) -> None:
    batch = {"events": [{"event_type": "row.imported", "data": {"n": n}} for n in range(3)]}
    first = await (await post(bus, "batch", batch, key='"import-7"')).json()  # a Structured Field string
    again = await post(bus, "batch", batch, key="import-7")  # the same key, bare
    assert (await again.json())["ids"] == first["ids"]
    assert [e["id"] for e in await history(bus, count=3)] == first["ids"]


async def test_a_key_reused_for_another_request_is_refused_and_stores_nothing(bus: Client) -> None:
    await post(bus, "webhook", EVENT, key="k-1")
    for path, body in [("webhook", {**EVENT, "data": {"order": 43}}), ("trigger", EVENT)]:
        refused = await post(bus, path, body, key="k-1")
        assert refused.status == 422
        assert "Idempotency-Key 'k-1' was first used with another request" in (await refused.json())["error"]
    assert len(await history(bus, count=1)) == 1


@pytest.mark.parametrize("key", ["", "has space", "é", "x" * 256], ids=["empty", "space", "non-ascii", "too-long"])
async def test_a_malformed_key_is_refused_naming_the_header(bus: Client, key: str) -> None:
    refused = await bus.post(
        "/api/dev/webhook",
        data=b'{"event_type": "x"}',
        headers={"Content-Type": "application/json", "Idempotency-Key": key},
    )
    assert refused.status == 400
    assert "Idempotency-Key must be 1-255 visible ASCII characters" in (await refused.json())["error"]
    metrics = await (await bus.get("/metrics")).text()
    assert 'devbus_rejected_total{reason="idempotency_key"} 1.0' in metrics


async def test_requests_with_one_key_in_flight_together_store_one_event(bus: Client) -> None:
    answers = await asyncio.gather(*(post(bus, "webhook", EVENT, key="burst") for _ in range(20)))
    ids = {(await answer.json())["id"] for answer in answers}
    assert len(ids) == 1
    assert sum(answer.headers.get("Idempotent-Replayed") == "true" for answer in answers) == 19
    assert len(await history(bus, count=1)) == 1


async def test_a_key_is_remembered_across_a_restart_of_a_sqlite_bus(make_bus: BusFactory, tmp_path: Path) -> None:
    store = f"sqlite:{tmp_path / 'keys.db'}"
    first = await make_bus(store=store)
    answer = await (await post(first, "webhook", EVENT, key="survives")).json()
    await first.close()
    second = await make_bus(store=store)
    again = await post(second, "webhook", EVENT, key="survives")
    assert again.headers["Idempotent-Replayed"] == "true"
    assert (await again.json())["id"] == answer["id"]
    stored = await (await second.get("/api/dev/history")).json()
    assert [e["id"] for e in stored["events"]] == [answer["id"]]


async def test_a_page_may_send_the_key_and_read_that_an_answer_is_a_replay(bus: Client) -> None:
    origin = {"Origin": "http://localhost:3000"}
    preflight = await bus.options(
        "/api/dev/webhook",
        headers={
            **origin,
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "idempotency-key",
        },
    )
    assert "Idempotency-Key" in preflight.headers["Access-Control-Allow-Headers"]
    answer = await post(bus, "webhook", EVENT, key="from-a-page", **origin)
    assert "Idempotent-Replayed" in answer.headers["Access-Control-Expose-Headers"]
