"""The SSE stream: framing, fan-out, filters, named mode, resume and gaps."""

from __future__ import annotations

import asyncio
import json
import socket

import httpx
import pytest
from httpx_sse import aconnect_sse
from support import BusFactory, Client, SSEReader, open_stream, post


async def test_stream_starts_with_retry_and_connected_frame(bus: Client) -> None:
    response = await bus.get("/api/dev/events")
    assert response.status == 200
    assert response.headers["Content-Type"] == "text/event-stream"
    assert response.headers["Cache-Control"] == "no-cache"
    assert response.headers["X-Accel-Buffering"] == "no"
    first = await SSEReader(response).frame()
    retry, data = first.split(b"\n")
    assert retry == b"retry: 1000"
    connected = json.loads(data.removeprefix(b"data: "))
    assert connected["type"] == "connected"
    assert connected["message"] == "SSE connected"
    assert b"id:" not in first


async def test_the_webhook_message_counts_subscribers_in_singular_and_plural(bus: Client) -> None:
    assert (await post(bus, "t.none"))["message"] == "Event t.none broadcasted to 0 subscribers"
    await open_stream(bus)
    assert (await post(bus, "t.one"))["message"] == "Event t.one broadcasted to 1 subscriber"


async def test_two_subscribers_get_the_same_exact_bytes(bus: Client) -> None:
    first, second = await open_stream(bus), await open_stream(bus)
    body = await post(bus, "test.event", {"message": "Hello"})
    assert body["message"] == "Event test.event broadcasted to 2 subscribers"
    assert body["subscribers"] == 2
    frames = [await first.frame(), await second.frame()]
    assert frames[0] == frames[1]
    event_id = body["id"]
    history = await (await bus.get("/api/dev/history")).json()
    [event] = history["events"]
    expected = b"id: " + event_id.encode() + b"\ndata: " + json.dumps(event, separators=(",", ":")).encode()
    assert frames[0] == expected
    assert event["type"] == "test.event"
    assert event["data"] == {"message": "Hello"}
    assert event["source"] == "http"
    assert event["timestamp"].endswith("Z")


async def test_named_mode_adds_event_line(bus: Client) -> None:
    named = await open_stream(bus, "/api/dev/events?named=1")
    await post(bus, "agent.created")
    lines = (await named.frame()).split(b"\n")
    assert lines[0].startswith(b"id: ")
    assert lines[1] == b"event: agent.created"
    assert lines[2].startswith(b"data: {")


async def test_type_filters_are_globs(bus: Client) -> None:
    filtered = await open_stream(bus, "/api/dev/events?types=agent.*,rental.created")
    for event_type in ("agent.created", "user.deleted", "rental.created", "rental.cancelled", "agent.bulk_created"):
        await post(bus, event_type)
    seen = [json.loads((await filtered.event())["data"])["type"] for _ in range(3)]
    assert seen == ["agent.created", "rental.created", "agent.bulk_created"]


async def test_webhook_counts_only_subscribers_it_reached(bus: Client) -> None:
    await open_stream(bus, "/api/dev/events?types=agent.*")
    await open_stream(bus)
    assert (await post(bus, "rental.created"))["subscribers"] == 1
    assert (await post(bus, "agent.created"))["subscribers"] == 2


async def test_reconnect_with_last_event_id_gets_exactly_the_missed_events(bus: Client) -> None:
    ids = [(await post(bus, "n", {"i": i}))["id"] for i in range(5)]
    resumed = await open_stream(bus, headers={"Last-Event-ID": ids[1]})
    replayed = [(await resumed.event())["id"] for _ in range(3)]
    assert replayed == ids[2:]
    live = (await post(bus, "n", {"i": 5}))["id"]
    assert (await resumed.event())["id"] == live


async def test_resume_by_query_parameters(bus: Client) -> None:
    ids = [(await post(bus, "n"))["id"] for _ in range(3)]
    for name in ("since", "last_event_id"):
        resumed = await open_stream(bus, f"/api/dev/events?{name}={ids[0]}")
        assert [(await resumed.event())["id"] for _ in range(2)] == ids[1:]


async def test_resume_from_the_newest_id_replays_nothing(bus: Client) -> None:
    ids = [(await post(bus, "n"))["id"] for _ in range(2)]
    resumed = await open_stream(bus, headers={"Last-Event-ID": ids[-1]})
    live = (await post(bus, "n"))["id"]
    assert (await resumed.event())["id"] == live


async def test_evicted_id_gets_a_gap_then_everything_retained(make_bus: BusFactory) -> None:
    client = await make_bus(history=3)
    ids = [(await post(client, "n", {"i": i}))["id"] for i in range(6)]
    resumed = await open_stream(client, headers={"Last-Event-ID": ids[0]})
    gap = await resumed.event()
    body = json.loads(gap["data"])
    assert body["type"] == "devbus.gap"
    assert body["data"]["last_event_id"] == ids[0]
    assert [(await resumed.event())["id"] for _ in range(3)] == ids[3:]


async def test_id_from_another_run_gets_a_gap(bus: Client) -> None:
    ids = [(await post(bus, "n"))["id"] for _ in range(2)]
    resumed = await open_stream(bus, headers={"Last-Event-ID": "0badc0de-7"})
    assert json.loads((await resumed.event())["data"])["type"] == "devbus.gap"
    assert [(await resumed.event())["id"] for _ in range(2)] == ids


RESUMES = {
    "since": ("/api/dev/events?since={id}", {}),
    "last_event_id": ("/api/dev/events?last_event_id={id}", {}),
    "header": ("/api/dev/events", {"Last-Event-ID": "{id}"}),
}


def resume_request(how: str, event_id: str) -> tuple[str, dict[str, str]]:
    path, headers = RESUMES[how]
    return path.format(id=event_id), {name: value.format(id=event_id) for name, value in headers.items()}


@pytest.mark.parametrize("how", list(RESUMES))
@pytest.mark.parametrize("bad", ["42", "latest", "abc def-1", "x-1.5"])
async def test_a_resume_id_of_no_id_form_is_refused_as_history_refuses_it(bus: Client, how: str, bad: str) -> None:
    """`?since=42` was a gap and a full replay on the stream, a 422 from /history and `devbus listen`."""
    ids = [(await post(bus, "n"))["id"] for _ in range(2)]
    path, headers = resume_request(how, bad)
    refused = await bus.get(path, headers=headers)
    assert refused.status == 422
    error = (await refused.json())["error"]
    field = {"since": "`since`", "last_event_id": "`last_event_id`", "header": "the Last-Event-ID header"}[how]
    assert error.startswith(f"{field} must be an event id such as {ids[-1]!r} (got {bad!r})")
    history = await bus.get("/api/dev/history", params={"since": bad})
    assert history.status == 422
    assert (await history.json())["error"].startswith(f"`since` must be an event id such as {ids[-1]!r}")
    # Nothing was subscribed by the refused stream.
    assert (await (await bus.get("/api/dev/health")).json())["subscribers"] == 0


@pytest.mark.parametrize("how", list(RESUMES))
@pytest.mark.parametrize("stale", ["0badc0de-7", "1764412345678-0"], ids=["other-run", "redis-form"])
async def test_an_id_of_another_run_or_store_is_a_gap_on_the_stream_and_everything_in_history(
    bus: Client, how: str, stale: str
) -> None:
    ids = [(await post(bus, "n"))["id"] for _ in range(2)]
    path, headers = resume_request(how, stale)
    resumed = await open_stream(bus, path, headers=headers)
    assert json.loads((await resumed.event())["data"])["type"] == "devbus.gap"
    assert [(await resumed.event())["id"] for _ in range(2)] == ids
    history = await (await bus.get("/api/dev/history", params={"since": stale})).json()
    assert [e["id"] for e in history["events"]] == ids


async def test_gap_reaches_filtered_subscribers(make_bus: BusFactory) -> None:
    client = await make_bus(history=1)
    await post(client, "agent.created")
    await post(client, "agent.created")
    resumed = await open_stream(client, "/api/dev/events?types=rental.*", headers={"Last-Event-ID": "x-1"})
    assert json.loads((await resumed.event())["data"])["type"] == "devbus.gap"


async def test_heartbeat_is_one_comment_line_without_a_blank_line(make_bus: BusFactory) -> None:
    client = await make_bus(heartbeat=0.2)
    reader = await open_stream(client)
    assert await reader.frame(within=5) == b": ping"
    assert await reader.frame(within=5) == b": ping"
    assert reader.raw.endswith(b"\n\n: ping\n: ping\n")


async def test_httpx_sse_sees_heartbeats_as_nothing(make_bus: BusFactory) -> None:
    """A `: ping` plus a blank line made httpx-sse yield an empty event every heartbeat."""
    client = await make_bus(heartbeat=0.05)
    async with (
        httpx.AsyncClient(base_url=str(client.make_url("/"))) as http,
        aconnect_sse(http, "GET", "/api/dev/events") as source,
    ):
        events = source.aiter_sse()
        assert json.loads((await anext(events)).data)["type"] == "connected"
        first = await post(client, "before.pings")
        assert (await anext(events)).id == first["id"]
        # A stream opened after this one has seen three heartbeats: so has this one.
        later = await open_stream(client)
        for _ in range(3):
            assert await later.frame() == b": ping"
        second = await post(client, "after.pings")
        after = await anext(events)
    assert (after.id, json.loads(after.data)["type"]) == (second["id"], "after.pings")


async def test_slow_subscriber_is_evicted_and_others_keep_going(make_bus: BusFactory) -> None:
    client = await make_bus(subscriber_buffer=256 * 1024)
    # A subscriber with a tiny receive window that never reads: the stalled tab.
    stalled = socket.socket()
    stalled.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    stalled.connect(("127.0.0.1", client.port))
    stalled.sendall(b"GET /api/dev/events HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
    fast = await open_stream(client)
    batches, size = 40, 200

    async def read_all() -> int:
        received = 0
        while received < batches * size:
            assert json.loads((await fast.event())["data"])["type"] == "bulk"
            received += 1
        return received

    reader = asyncio.ensure_future(read_all())
    payload = {"blob": "x" * 1024}
    for _ in range(batches):
        response = await client.post(
            "/api/dev/batch", json={"events": [{"event_type": "bulk", "data": payload} for _ in range(size)]}
        )
        assert response.status == 200
    assert await reader == batches * size
    metrics = await (await client.get("/metrics")).text()
    assert "devbus_evictions_total 1.0" in metrics
    health = await (await client.get("/api/dev/health")).json()
    assert health["subscribers"] == 1
    stalled.close()
