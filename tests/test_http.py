"""The HTTP API: response shapes, batch, history, health, metrics and every error status."""

from __future__ import annotations

import pytest
from support import BusFactory, Client, open_stream

JSON = {"Content-Type": "application/json"}


async def test_trigger_shape_and_source(bus: Client) -> None:
    stream = await open_stream(bus)
    response = await bus.post(
        "/api/dev/trigger", json={"event_type": "frontend.file_changed", "data": {"file": "a.tsx", "timestamp": 1}}
    )
    body = await response.json()
    assert body == {"success": True, "id": body["id"], "subscribers_notified": 1}
    assert '"source":"trigger"' in (await stream.event())["data"]


async def test_sender_may_name_the_source(bus: Client) -> None:
    await bus.post("/api/dev/webhook", json={"event_type": "t", "data": {}, "source": "backend"})
    [event] = (await (await bus.get("/api/dev/history")).json())["events"]
    assert event["source"] == "backend"


async def test_missing_data_defaults_to_empty_object(bus: Client) -> None:
    await bus.post("/api/dev/webhook", json={"event_type": "t"})
    [event] = (await (await bus.get("/api/dev/history")).json())["events"]
    assert event["data"] == {}


async def test_batch_keeps_order_and_returns_ids(bus: Client) -> None:
    stream = await open_stream(bus)
    events = [{"event_type": f"e.{i}", "data": {"i": i}} for i in range(5)]
    body = await (await bus.post("/api/dev/batch", json={"events": events})).json()
    assert body["success"] is True
    assert [(await stream.event())["id"] for _ in range(5)] == body["ids"]


async def test_batch_is_all_or_nothing(bus: Client) -> None:
    events = [{"event_type": "ok", "data": {}}, {"event_type": "bad type", "data": {}}]
    response = await bus.post("/api/dev/batch", json={"events": events})
    assert response.status == 422
    assert "events[1]" in (await response.json())["error"]
    assert (await (await bus.get("/api/dev/history")).json())["events"] == []


@pytest.mark.parametrize(
    ("body", "headers", "status", "message"),
    [
        (b'{"event_type": "a"', JSON, 400, "not valid JSON"),
        (b'{"event_type": "a"}', {"Content-Type": "text/plain"}, 415, "application/json"),
        (b'{"data": {}}', JSON, 422, "event_type"),
        (b'{"event_type": 5}', JSON, 422, "$.event_type"),
        (b'{"event_type": "a", "data": [1]}', JSON, 422, "$.data"),
        (b'{"event_type": ""}', JSON, 422, "1-200 characters"),
        (b'{"event_type": "' + b"x" * 201 + b'"}', JSON, 422, "1-200 characters"),
        (b'{"event_type": "a\\nb"}', JSON, 422, "control characters"),
        (b"[1, 2]", JSON, 422, "object"),
    ],
    ids=[
        "truncated",
        "text-plain",
        "no-type",
        "type-not-str",
        "data-array",
        "empty-type",
        "long-type",
        "newline-in-type",
        "not-an-object",
    ],
)
async def test_bad_input_is_refused_and_changes_nothing(
    bus: Client, body: bytes, headers: dict[str, str], status: int, message: str
) -> None:
    response = await bus.post("/api/dev/webhook", data=body, headers=headers)
    assert response.status == status
    error = await response.json()
    assert error["success"] is False
    assert message in error["error"]
    assert (await (await bus.get("/api/dev/health")).json())["events"] == 0


async def test_body_over_the_limit_is_413(make_bus: BusFactory) -> None:
    client = await make_bus(max_body=1024)
    response = await client.post("/api/dev/webhook", json={"event_type": "t", "data": {"x": "y" * 2000}})
    assert response.status == 413
    assert "1024 bytes" in (await response.json())["error"]


async def test_history_filters_limits_and_pages(bus: Client) -> None:
    ids = []
    for i in range(6):
        ids.append((await (await bus.post("/api/dev/webhook", json={"event_type": f"t.{i % 2}"})).json())["id"])
    everything = (await (await bus.get("/api/dev/history")).json())["events"]
    assert [e["id"] for e in everything] == ids
    newest = (await (await bus.get("/api/dev/history?limit=2")).json())["events"]
    assert [e["id"] for e in newest] == ids[-2:]
    odd = (await (await bus.get("/api/dev/history?types=t.1")).json())["events"]
    assert [e["id"] for e in odd] == ids[1::2]
    after = (await (await bus.get(f"/api/dev/history?since={ids[2]}&limit=2")).json())["events"]
    assert [e["id"] for e in after] == ids[3:5]


@pytest.mark.parametrize("query", ["limit=0", "limit=abc", "since=nonsense"], ids=["zero", "text", "bad-since"])
async def test_history_rejects_bad_queries(bus: Client, query: str) -> None:
    response = await bus.get(f"/api/dev/history?{query}")
    assert response.status == 422
    assert (await response.json())["success"] is False


async def test_health(bus: Client) -> None:
    await open_stream(bus)
    await bus.post("/api/dev/webhook", json={"event_type": "t"})
    health = await (await bus.get("/api/dev/health")).json()
    assert health["status"] == "ok"
    assert health["subscribers"] == 1
    assert health["events"] == 1
    assert health["version"]
    assert health["uptime_s"] >= 0


async def test_metrics_count_inputs_deliveries_and_rejects(bus: Client) -> None:
    await open_stream(bus)
    await open_stream(bus)
    await bus.post("/api/dev/webhook", json={"event_type": "t"})
    await bus.post("/api/dev/trigger", json={"event_type": "t"})
    await bus.post("/api/dev/webhook", data=b"{", headers=JSON)
    response = await bus.get("/metrics")
    assert response.headers["Content-Type"].startswith("text/plain")
    text = await response.text()
    assert 'devbus_events_total{source="http"} 1.0' in text
    assert 'devbus_events_total{source="trigger"} 1.0' in text
    assert "devbus_deliveries_total 4.0" in text
    assert "devbus_subscribers 2.0" in text
    assert 'devbus_rejected_total{reason="malformed_json"} 1.0' in text


async def test_prefix_is_configurable(make_bus: BusFactory) -> None:
    client = await make_bus(prefix="/bus")
    stream = await open_stream(client, "/bus/events")
    assert (await client.post("/bus/webhook", json={"event_type": "t"})).status == 200
    assert (await stream.event())["id"]
    assert (await client.post("/api/dev/webhook", json={"event_type": "t"})).status == 404


async def test_cors_preflight_and_echo_for_a_loopback_page(bus: Client) -> None:
    origin = "http://localhost:3000"
    preflight = await bus.options(
        "/api/dev/webhook",
        headers={
            "Origin": origin,
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "content-type",
        },
    )
    assert preflight.status == 204
    assert preflight.headers["Access-Control-Allow-Origin"] == origin
    assert "POST" in preflight.headers["Access-Control-Allow-Methods"]
    assert "Content-Type" in preflight.headers["Access-Control-Allow-Headers"]
    response = await bus.post("/api/dev/webhook", json={"event_type": "t"}, headers={"Origin": origin})
    assert response.headers["Access-Control-Allow-Origin"] == origin
    assert response.headers["Vary"] == "Origin"
    stream = await bus.get("/api/dev/events", headers={"Origin": origin})
    assert stream.headers["Access-Control-Allow-Origin"] == origin


async def test_foreign_origin_is_refused_before_any_work(bus: Client) -> None:
    response = await bus.post("/api/dev/webhook", json={"event_type": "t"}, headers={"Origin": "http://evil.com"})
    assert response.status == 403
    assert "--allow-origin" in (await response.json())["error"]
    assert (await bus.get("/api/dev/events", headers={"Origin": "http://evil.com"})).status == 403
    assert (await (await bus.get("/api/dev/health")).json())["events"] == 0


async def test_unknown_paths_and_methods_answer_json_like_every_other_error(bus: Client) -> None:
    missing = await bus.get("/api/dev/nope")
    assert missing.status == 404
    assert missing.content_type == "application/json"
    assert (await missing.json())["success"] is False
    assert "/api/dev/webhook" in (await missing.json())["error"]
    wrong_method = await bus.get("/api/dev/webhook")
    assert wrong_method.status == 405
    assert wrong_method.headers["Allow"] == "POST"
    assert await wrong_method.json() == {"success": False, "error": "GET is not allowed on /api/dev/webhook; use POST"}
