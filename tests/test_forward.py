"""`devbus run --forward URL`: events POSTed to real local receivers, in order, with retries."""

from __future__ import annotations

import asyncio
import json
import re
import socket
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from click.testing import CliRunner
from readme import example, readme_example
from support import WAIT, BusFactory, BusProcess, Client, eventually, open_stream, post, post_batch
from test_fastapi_example import Uvicorn

from devbus.bus.outputs.forward import EPOCH_HEADER, FORWARDED_HEADER, IDEMPOTENCY_HEADER, parse_target
from devbus.cli import main
from devbus.errors import ConfigError


class Reserved:
    """A loopback port that refuses connections until released for a receiver."""

    def __init__(self) -> None:
        self._sock = socket.socket()
        self._sock.bind(("127.0.0.1", 0))  # bound but not listening: connections are refused
        self.port = int(self._sock.getsockname()[1])
        self.url = f"http://127.0.0.1:{self.port}/hook"

    def release(self) -> int:
        self._sock.close()
        return self.port


@pytest.fixture
def down_target() -> Iterator[Callable[[], Reserved]]:
    """Reserve ports where no receiver listens yet; all are released at the end."""
    held: list[Reserved] = []

    def reserve() -> Reserved:
        held.append(Reserved())
        return held[-1]

    yield reserve
    for reserved in held:
        reserved.release()


async def forward_state(client: Client) -> list[dict[str, Any]]:
    health = await (await client.get("/api/dev/health")).json()
    return list(health["forward"])


async def metric(client: Client, name: str) -> float:
    text = await (await client.get("/metrics")).text()
    match = re.search(rf"^{name}\{{[^}}]*\}} (\S+)$", text, re.MULTILINE)
    return float(match.group(1)) if match else 0.0


async def test_forwards_each_envelope_in_order(make_bus: BusFactory, receivers: Any) -> None:
    receiver = await receivers()
    client = await make_bus(forward=(receiver.url,))
    types = [f"agent.created.{i}" for i in range(200)]
    await post_batch(client, [(t, {}) for t in types[:100]])
    for event_type in types[100:110]:
        await post(client, event_type)
    await post_batch(client, [(t, {}) for t in types[110:]])

    assert await receiver.wait_accepted(200) == types
    history = await (await client.get("/api/dev/history", params={"limit": "1000"})).json()
    assert receiver.accepted == history["events"]
    assert receiver.headers[0]["Content-Type"] == "application/json"
    assert receiver.headers[0][FORWARDED_HEADER] == f"127.0.0.1:{receiver.port}"
    # A receiver can drop a repeat by its key; the lease's epoch is a cluster's alone.
    assert [h[IDEMPOTENCY_HEADER] for h in receiver.headers] == [e["id"] for e in receiver.accepted]
    assert not any(EPOCH_HEADER in h for h in receiver.headers)
    assert len(receiver.attempts) == 200
    assert await metric(client, "devbus_forwarded_total") == 200


async def test_forward_types_limit_what_is_sent(make_bus: BusFactory, receivers: Any) -> None:
    receiver = await receivers()
    client = await make_bus(forward=(receiver.url,), forward_types=("agent.*,done",))
    await post_batch(client, [(t, {}) for t in ["agent.created", "rental.created", "agent.deleted", "done"]])
    assert await receiver.wait_accepted(3) == ["agent.created", "agent.deleted", "done"]


async def test_server_errors_are_retried_until_delivered_once(make_bus: BusFactory, receivers: Any) -> None:
    receiver = await receivers(statuses=[500, 500])
    client = await make_bus(forward=(receiver.url,))
    await post(client, "order.placed")
    await post(client, "order.shipped")

    assert await receiver.wait_accepted(2) == ["order.placed", "order.shipped"]
    assert [e["type"] for e in receiver.attempts] == ["order.placed"] * 3 + ["order.shipped"]
    assert await metric(client, "devbus_forward_failures_total") == 2
    assert await metric(client, "devbus_forwarded_total") == 2
    [state] = await forward_state(client)
    assert state["state"] == "up"


async def test_client_errors_drop_that_event_and_count_it(
    make_bus: BusFactory, receivers: Any, caplog: pytest.LogCaptureFixture
) -> None:
    receiver = await receivers(statuses=[422])
    client = await make_bus(forward=(receiver.url,))
    await post_batch(client, [(t, {}) for t in ["bad.shape", "good.shape"]])

    assert await receiver.wait_accepted(1) == ["good.shape"]
    assert len(receiver.attempts) == 2
    [state] = await forward_state(client)
    assert state["rejected"] == 1
    assert await metric(client, "devbus_forward_rejected_total") == 1
    assert any("HTTP 422" in r.getMessage() for r in caplog.records)


async def test_target_that_comes_back_gets_everything_queued_in_order(
    make_bus: BusFactory, receivers: Any, down_target: Callable[[], Reserved], caplog: pytest.LogCaptureFixture
) -> None:
    target = down_target()
    client = await make_bus(forward=(target.url,))
    types = [f"step.{i}" for i in range(30)]
    await post_batch(client, [(t, {}) for t in types[:10]])

    async def down() -> bool:
        [state] = await forward_state(client)
        return bool(state["state"] == "down")

    await eventually(down)
    await post_batch(client, [(t, {}) for t in types[10:20]])
    [state] = await forward_state(client)
    assert state["queued"] == 20
    assert await metric(client, "devbus_forward_up") == 0

    receiver = await receivers(target.release())
    await post_batch(client, [(t, {}) for t in types[20:]])
    assert await receiver.wait_accepted(30) == types
    [state] = await forward_state(client)
    assert (state["state"], state["queued"], state["dropped"]) == ("up", 0, 0)
    outage = [r.getMessage() for r in caplog.records if "is down" in r.getMessage()]
    assert len(outage) == 1, "one warning per outage, not one per retry"


async def test_overflow_drops_the_oldest_and_says_so(
    make_bus: BusFactory, receivers: Any, down_target: Callable[[], Reserved], caplog: pytest.LogCaptureFixture
) -> None:
    target = down_target()
    client = await make_bus(forward=(target.url,), forward_queue=3)
    await post_batch(client, [(t, {}) for t in [f"n.{i}" for i in range(10)]])

    [state] = await forward_state(client)
    assert (state["queued"], state["dropped"]) == (3, 7)
    assert await metric(client, "devbus_forward_dropped_total") == 7
    assert sum("is full" in r.getMessage() for r in caplog.records) == 1

    receiver = await receivers(target.release())
    assert await receiver.wait_accepted(3) == ["n.7", "n.8", "n.9"]


async def test_events_a_target_posts_back_are_not_sent_back_to_it(make_bus: BusFactory, receivers: Any) -> None:
    """A backend that reacts to an event by posting one must not receive its own post."""
    bus: list[Client] = []

    async def react(request: web.Request, event: dict[str, Any]) -> None:
        if event["type"] == "order.placed":
            # The documented way: tag what you post with the name the bus sent.
            await post(bus[0], "order.confirmed", source=request.headers[FORWARDED_HEADER])

    backend = await receivers(on_event=react)
    other = await receivers()
    client = await make_bus(forward=(backend.url, other.url))
    bus.append(client)
    await post(client, "order.placed")

    assert await other.wait_accepted(2) == ["order.placed", "order.confirmed"]
    assert other.accepted[1]["source"] == f"127.0.0.1:{backend.port}"
    await post(client, "done")
    assert await backend.wait_accepted(2) == ["order.placed", "done"]
    assert await other.wait_accepted(3) == ["order.placed", "order.confirmed", "done"]
    assert await metric(client, "devbus_forward_skipped_total") == 1


async def test_named_target_skips_events_from_that_name(make_bus: BusFactory, receivers: Any) -> None:
    receiver = await receivers()
    client = await make_bus(forward=(f"backend={receiver.url}",))
    await post(client, "from.backend", source="backend")
    await post(client, "from.browser")
    assert await receiver.wait_accepted(1) == ["from.browser"]
    assert receiver.headers[0][FORWARDED_HEADER] == "backend"


async def test_a_hung_target_never_slows_the_bus(make_bus: BusFactory, receivers: Any) -> None:
    release = asyncio.Event()

    async def hang(request: web.Request, event: dict[str, Any]) -> None:
        await release.wait()

    receiver = await receivers(on_event=hang)
    client = await make_bus(forward=(receiver.url,))
    stream = await open_stream(client)
    try:
        async with asyncio.timeout(WAIT):
            for i in range(20):
                await post(client, f"tick.{i}")
            for i in range(20):
                assert json.loads((await stream.event())["data"])["type"] == f"tick.{i}"
        [state] = await forward_state(client)
        assert state["queued"] == 20
    finally:
        release.set()
        stream.response.close()
    assert len(await receiver.wait_accepted(20)) == 20


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("http://127.0.0.1:8000/events", ("127.0.0.1:8000", "http://127.0.0.1:8000/events")),
        ("http://localhost/events", ("localhost:80", "http://localhost/events")),
        ("https://[::1]/e?k=v", ("[::1]:443", "https://[::1]/e?k=v")),
        ("api=http://127.0.0.1:9000/x", ("api", "http://127.0.0.1:9000/x")),
    ],
    ids=["host-port", "default-port", "ipv6-https", "named"],
)
def test_parse_target(value: str, expected: tuple[str, str]) -> None:
    assert parse_target(value) == expected


@pytest.mark.parametrize("value", ["ftp://127.0.0.1/x", "127.0.0.1:8000", "http://127.0.0.1:99999/"])
def test_bad_forward_url_is_refused_in_one_line(value: str) -> None:
    with pytest.raises(ConfigError, match="--forward"):
        parse_target(value)
    result = CliRunner().invoke(main, ["run", "--port", "0", "--ingest", "", "--egress", "", "--forward", value])
    assert result.exit_code != 0
    assert "--forward" in result.output and "Traceback" not in result.output


async def test_devbus_run_forward_option(bus_process: Any, receivers: Any) -> None:
    receiver = await receivers()
    bus = await asyncio.to_thread(bus_process, "--forward", receiver.url, "--forward-types", "cli.*", "--quiet")
    async with aiohttp.ClientSession() as session:
        for event_type in ("cli.one", "other", "cli.two"):
            body: dict[str, Any] = {"event_type": event_type, "data": {}}
            async with session.post(f"{bus.url}/api/dev/webhook", json=body) as response:
                assert response.status == 200
        async with session.get(f"{bus.url}/api/dev/health") as response:
            health = await response.json()
    assert await receiver.wait_accepted(2) == ["cli.one", "cli.two"]
    assert health["forward"][0]["url"] == receiver.url
    assert await asyncio.to_thread(bus.stop) == 0


def post_json(url: str, body: dict[str, Any], headers: dict[str, str] | None = None) -> Any:
    """POST ``body`` as JSON; return the decoded answer, which must be a 200."""
    request = urllib.request.Request(
        url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json", **(headers or {})}
    )
    with urllib.request.urlopen(request, timeout=WAIT) as answer:
        assert answer.status == 200
        return json.load(answer)


@readme_example("forward-receiver")
def test_the_readme_receiver_takes_each_event_once_in_order(
    tmp_path: Path, bus_process: Callable[..., BusProcess]
) -> None:
    """The README's receiver, verbatim under uvicorn, behind a real bus; a repeat is answered and dropped."""
    (tmp_path / "app.py").write_text(example("forward-receiver").text)
    server = Uvicorn(tmp_path, ingest="")
    try:
        server.output.wait_for_line("Application startup complete")
        bus = bus_process("--forward", f"{server.url}/dev/events", "--quiet")
        events = [{"event_type": f"step.{n}", "data": {"n": n}} for n in range(20)]
        ids = post_json(f"{bus.url}/api/dev/batch", {"events": events})["ids"]
        server.output.wait_for_line(rf"took {ids[-1]} step\.19")
        # The same event again, as a bus sends it after a lost answer: 2xx, and not handled twice.
        again = {"id": ids[3], "type": "step.3", "data": {"n": 3}}
        post_json(f"{server.url}/dev/events", again, {IDEMPOTENCY_HEADER: ids[3]})
        last = post_json(f"{bus.url}/api/dev/webhook", {"event_type": "step.last"})["id"]
        server.output.wait_for_line(rf"took {last} step\.last")
        took = [line.split()[1] for line in server.output.lines if line.startswith("took ")]
        assert took == [*ids, last]
    finally:
        server.output.close()
