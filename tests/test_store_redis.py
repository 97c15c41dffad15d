"""`--store redis://`: several buses on one Redis Stream, against a real redis-server on a free port."""

from __future__ import annotations

import asyncio
import json
import logging
import urllib.request
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import zmq
import zmq.asyncio
from aiohttp.test_utils import TestServer
from click.testing import CliRunner
from redis.asyncio import Redis
from support import (
    WAIT,
    BusFactory,
    BusProcess,
    Client,
    Receiver,
    RedisServer,
    SSEReader,
    connect_sender,
    eventually,
    free_port,
    open_stream,
    post,
    start_redis,
    wait_for_total,
)

from devbus.bus.app import create_app
from devbus.bus.keys import ENDPOINTS
from devbus.bus.settings import Settings
from devbus.bus.store import create_store
from devbus.cli import main
from devbus.errors import ConfigError
from devbus.frames import encode_frames

Receivers = Callable[..., Awaitable[Receiver]]


def stream_order(event_id: str) -> tuple[int, int]:
    ms, _, seq = event_id.partition("-")
    return int(ms), int(seq)


async def two_buses(make_bus: BusFactory, redis_server: RedisServer, **settings: Any) -> tuple[Client, Client]:
    """Two buses on one stream of ``redis_server``."""
    return await make_bus(store=redis_server.url, **settings), await make_bus(store=redis_server.url, **settings)


async def ids_seen(stream: SSEReader, count: int) -> list[str]:
    """The ids of the next ``count`` events of ``stream``."""
    return [(await stream.event())["id"] for _ in range(count)]


async def history_ids(client: Client, **params: str) -> list[str]:
    response = await client.get("/api/dev/history", params={"limit": "10000", **params})
    assert response.status == 200, await response.text()
    return [event["id"] for event in (await response.json())["events"]]


async def test_two_buses_deliver_every_event_of_both_in_one_order(
    make_bus: BusFactory, redis_server: RedisServer
) -> None:
    a, b = await two_buses(make_bus, redis_server)
    on_a, on_b = await open_stream(a), await open_stream(b)
    answers = await asyncio.gather(*(post(a if n % 2 else b, f"e.{n}", {"n": n}) for n in range(40)))
    seen_a, seen_b = await ids_seen(on_a, 40), await ids_seen(on_b, 40)
    assert seen_a == seen_b
    assert sorted(seen_a, key=stream_order) == seen_a
    assert set(seen_a) == {answer["id"] for answer in answers}
    # Each bus answered once its own reader had delivered the event: it counts the stream there.
    assert all(answer["subscribers"] == 1 for answer in answers)
    assert await history_ids(a) == await history_ids(b) == seen_a


async def test_a_stream_resumes_on_another_bus_with_an_id_from_the_first(
    make_bus: BusFactory, redis_server: RedisServer
) -> None:
    a, b = await two_buses(make_bus, redis_server)
    sent = [(await post(a, f"a.{n}"))["id"] for n in range(5)]
    sent += [(await post(b, f"b.{n}"))["id"] for n in range(3)]
    resumed = await open_stream(b, headers={"Last-Event-ID": sent[2]})
    assert await ids_seen(resumed, 5) == sent[3:]
    live = (await post(a, "after.resume"))["id"]
    event = await resumed.event()
    assert (event["id"], json.loads(event["data"])["type"]) == (live, "after.resume")


async def test_a_bus_answers_503_naming_the_store_while_redis_is_gone_and_recovers(
    make_bus: BusFactory, redis_server: RedisServer
) -> None:
    bus = await make_bus(store=redis_server.url)
    stream = await open_stream(bus)
    await post(bus, "before")
    redis_server.kill()
    response = await bus.post("/api/dev/webhook", json={"event_type": "during"})
    assert response.status == 503
    assert redis_server.url in (await response.json())["error"]
    health = await (await bus.get("/api/dev/health")).json()
    assert (health["store"]["name"], health["store"]["state"]) == (redis_server.url, "down")
    assert f'devbus_store_up{{store="{redis_server.url}"}} 0.0' in await (await bus.get("/metrics")).text()
    redis_server.start()

    async def accepted() -> bool:
        # A client told 503 sends again.
        response = await bus.post("/api/dev/webhook", json={"event_type": "after"})
        assert response.status in (200, 503), await response.text()
        return response.status == 200

    await eventually(accepted)
    # The stream stayed open through the outage and goes on.
    assert [json.loads((await stream.event())["data"])["type"] for _ in range(2)] == ["before", "after"]
    health = await (await bus.get("/api/dev/health")).json()
    assert health["store"]["state"] == "up"


async def test_redis_restarted_under_a_live_publisher_loses_nothing_acknowledged(
    make_bus: BusFactory, redis_server: RedisServer
) -> None:
    a, b = await two_buses(make_bus, redis_server)
    on_a, on_b = await open_stream(a), await open_stream(b)
    acknowledged: list[str] = []
    refused = 0
    a_third_sent = asyncio.Event()

    async def publish(count: int) -> None:
        nonlocal refused
        n = 0
        while n < count:
            client = a if n % 2 else b
            response = await client.post("/api/dev/webhook", json={"event_type": "live", "data": {"n": n}})
            if response.status == 503:
                refused += 1
                await asyncio.sleep(0.01)  # a publisher's retry delay, not synchronisation
                continue
            assert response.status == 200, await response.text()
            acknowledged.append((await response.json())["id"])
            n += 1
            if n == count // 3:
                a_third_sent.set()

    publisher = asyncio.create_task(publish(300))
    async with asyncio.timeout(WAIT):
        await a_third_sent.wait()
    redis_server.restart()
    async with asyncio.timeout(WAIT * 3):
        await publisher
    assert refused > 0, "the restart went unnoticed: the test did not test it"

    async def seen(stream: SSEReader) -> list[str]:
        ids: list[str] = []
        async with asyncio.timeout(WAIT * 3):
            while not set(acknowledged) <= set(ids):
                ids.append((await stream.event())["id"])
        return ids

    seen_a, seen_b = await seen(on_a), await seen(on_b)
    # An event refused with 503 may still have been stored; every acknowledged one is there, once, in order.
    assert seen_a == seen_b
    assert len(set(seen_a)) == len(seen_a)
    assert sorted(seen_a, key=stream_order) == seen_a
    assert set(acknowledged) <= set(await history_ids(a))


async def test_zeromq_ingest_holds_while_redis_is_gone_and_drops_nothing(
    make_bus: BusFactory, redis_server: RedisServer, zmq_context: zmq.asyncio.Context, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="devbus.bus.inputs.zeromq")
    bus = await make_bus(store=redis_server.url, ingest="tcp://127.0.0.1:*")
    sender = await connect_sender(zmq_context, bus.app[ENDPOINTS]["ingest"])
    redis_server.kill()
    for n in range(500):
        await sender.send_multipart(encode_frames("held", {"n": n}))

    async def holding() -> bool:
        # The ingest holds what the store refused; the writer holds the call Redis may have run.
        return "until the store is back" in caplog.text or "is unreachable" in caplog.text

    await eventually(holding)
    redis_server.start()
    await wait_for_total(bus, 500, within=WAIT * 2)
    response = await bus.get("/api/dev/history", params={"limit": "1000"})
    assert [event["data"]["n"] for event in (await response.json())["events"]] == list(range(500))


async def test_a_bus_stops_while_redis_is_away_and_says_what_it_did_not_store(
    redis_server: RedisServer, zmq_context: zmq.asyncio.Context, caplog: pytest.LogCaptureFixture
) -> None:
    """Regression: stopping waited for ever for the batches taken from ZeroMQ senders to be committed."""
    app = create_app(Settings(store=redis_server.url, ingest="tcp://127.0.0.1:*", egress=None))
    server = TestServer(app)
    await server.start_server()
    try:
        sender = await connect_sender(zmq_context, app[ENDPOINTS]["ingest"])
        redis_server.kill()
        for n in range(500):
            await sender.send_multipart(encode_frames("held", {"n": n}))

        async def unreachable() -> bool:
            return "is unreachable" in caplog.text

        await eventually(unreachable)
    finally:
        async with asyncio.timeout(WAIT * 2):
            await server.close()
    # Every batch read is accounted for: stored, or said not to be (the sender used plain PUB).
    assert "not stored" in caplog.text or "could not store" in caplog.text


def test_kill_9_of_one_bus_loses_nothing_it_acknowledged(
    bus_process: Callable[..., BusProcess], redis_server: RedisServer
) -> None:
    a = bus_process("--store", redis_server.url, "--quiet")
    b = bus_process("--store", redis_server.url, "--quiet")
    events = [{"event_type": "kept", "data": {"n": n}} for n in range(500)]
    acknowledged = []
    for start in range(0, 500, 50):
        body = json.dumps({"events": events[start : start + 50]}).encode()
        request = urllib.request.Request(
            f"{a.url}/api/dev/batch", data=body, headers={"Content-Type": "application/json"}, method="POST"
        )
        with urllib.request.urlopen(request, timeout=WAIT) as response:
            acknowledged += json.load(response)["ids"]
    a.proc.kill()
    a.proc.wait(timeout=WAIT)
    with urllib.request.urlopen(f"{b.url}/api/dev/history?limit=1000", timeout=WAIT) as response:
        kept = json.load(response)["events"]
    assert [event["id"] for event in kept] == acknowledged
    assert [event["data"]["n"] for event in kept] == list(range(500))


async def test_a_forward_target_behind_two_buses_gets_each_event_once_in_order(
    make_bus: BusFactory, redis_server: RedisServer, receivers: Receivers
) -> None:
    receiver = await receivers()
    a, b = await two_buses(make_bus, redis_server, forward=(receiver.url,))
    stream = await open_stream(a)
    for n in range(30):
        await post(a if n % 2 else b, f"fw.{n}")
    # Loop safety holds: what the target posted itself is not sent back to it.
    response = await a.post(
        "/api/dev/webhook", json={"event_type": "from.target", "source": f"127.0.0.1:{receiver.port}"}
    )
    assert response.status == 200
    await post(a, "last")
    order = [json.loads((await stream.event())["data"])["type"] for _ in range(32)]
    # Sent by one bus for the cluster, in order: a duplicate would come before "last".
    assert await receiver.wait_accepted(31) == [t for t in order if t != "from.target"]
    assert [e["id"] for e in receiver.accepted] == sorted((e["id"] for e in receiver.accepted), key=stream_order)


async def test_forwarding_goes_on_when_the_bus_sending_it_stops(
    make_bus: BusFactory, redis_server: RedisServer, receivers: Receivers
) -> None:
    receiver = await receivers()
    a = await make_bus(store=redis_server.url, forward=(receiver.url,))
    for n in range(5):
        await post(a, f"first.{n}")
    await receiver.wait_accepted(5)
    b = await make_bus(store=redis_server.url, forward=(receiver.url,))
    await a.close()  # the lease holder stops; the other bus takes over
    for n in range(5):
        await post(b, f"second.{n}")
    types = await receiver.wait_accepted(10, within=WAIT * 2)
    assert types == [f"first.{n}" for n in range(5)] + [f"second.{n}" for n in range(5)]


@pytest.mark.slow
async def test_a_forward_target_gets_every_event_after_the_sending_bus_is_killed(
    bus_process: Callable[..., BusProcess], redis_server: RedisServer, receivers: Receivers
) -> None:
    receiver = await receivers()
    args = ("--store", redis_server.url, "--quiet", "--forward", receiver.url)
    a = bus_process(*args)
    async with aiohttp.ClientSession() as session:

        async def post_to(bus: BusProcess, event_type: str) -> None:
            async with session.post(f"{bus.url}/api/dev/webhook", json={"event_type": event_type}) as response:
                assert response.status == 200, await response.text()

        for n in range(5):
            await post_to(a, f"first.{n}")
        await receiver.wait_accepted(5)
        b = await asyncio.to_thread(bus_process, *args)
        a.proc.kill()
        await asyncio.to_thread(a.proc.wait, WAIT)
        for n in range(5):
            await post_to(b, f"second.{n}")
        # The dead bus's lease runs out; the other one goes on from where the target stands.
        types = await receiver.wait_accepted(10, within=WAIT * 2)
    assert types == [f"first.{n}" for n in range(5)] + [f"second.{n}" for n in range(5)]


@pytest.mark.parametrize(
    "url",
    ["redis://", "redis://127.0.0.1:6379/zero", "redis://127.0.0.1:99999/0", "unix://"],
    ids=["no-host", "bad-db", "bad-port", "no-socket"],
)
def test_a_bad_redis_url_says_what_to_do(url: str) -> None:
    with pytest.raises(ConfigError, match="--store"):
        create_store(url, history=10, history_bytes=1000)


def test_run_with_an_unreachable_redis_stops_with_one_line() -> None:
    url = f"redis://127.0.0.1:{free_port()}/0"
    result = CliRunner().invoke(main, ["run", "--port", "0", "--ingest", "", "--egress", "", "--store", url])
    assert result.exit_code != 0
    [line] = result.output.strip().splitlines()
    assert f"Cannot use the store {url}" in line
    assert "start Redis there or fix --store" in line


async def test_buses_with_different_store_keys_share_a_redis_but_not_events(
    make_bus: BusFactory, redis_server: RedisServer
) -> None:
    a = await make_bus(store=redis_server.url, store_key="team-a")
    b = await make_bus(store=redis_server.url, store_key="team-b")
    await post(a, "only.a")
    await post(b, "only.b")
    response = await b.get("/api/dev/history")
    assert [event["type"] for event in (await response.json())["events"]] == ["only.b"]


async def test_an_event_comes_back_from_redis_byte_for_byte(make_bus: BusFactory, redis_server: RedisServer) -> None:
    """Entries travel to Redis newline-separated: text with newlines, quotes and non-ASCII must survive."""
    a, b = await two_buses(make_bus, redis_server)
    stream = await open_stream(b)
    data = {"text": 'line 1\nline 2 "quoted" \\ ☃', "nested": {"list": [1, 2.5, None, True]}}
    sent = await a.post("/api/dev/webhook", json={"event_type": 'odd"type\\é', "data": data, "source": "ünï"})
    assert sent.status == 200, await sent.text()
    event = json.loads((await stream.event())["data"])
    assert (event["type"], event["data"], event["source"]) == ('odd"type\\é', data, "ünï")


async def retained_counts(bus: Client) -> tuple[int, int, float]:
    """What health says is retained (top level and under store), and the history gauge of /metrics."""
    health = await (await bus.get("/api/dev/health")).json()
    metrics = await (await bus.get("/metrics")).text()
    [gauge] = [line for line in metrics.splitlines() if line.startswith("devbus_history_events ")]
    return health["retained"], health["store"]["retained"], float(gauge.split()[1])


@pytest.mark.parametrize("loss", ["flushall", "restart"], ids=["flushall", "restart-without-persistence"])
async def test_health_and_metrics_count_what_the_stream_holds_after_redis_lost_its_data(
    make_bus: BusFactory, tmp_path: Path, loss: str
) -> None:
    """After Redis lost its data, /health said 7 retained and devbus_history_events 7 while the stream held 3."""
    server = start_redis(tmp_path, appendonly=False)
    redis = Redis.from_url(server.url)
    try:
        bus = await make_bus(store=server.url)
        for n in range(7):
            await post(bus, "before", {"n": n})
        assert await retained_counts(bus) == (7, 7, 7.0)
        if loss == "flushall":
            await redis.flushall()
        else:
            server.restart()
        sent = 0

        async def accepted() -> bool:
            nonlocal sent
            response = await bus.post("/api/dev/webhook", json={"event_type": "after", "data": {}})
            sent += response.status == 200
            return response.status == 200

        await eventually(accepted)  # a restarted Redis: 503 until the bus is back on it
        while sent < 3:
            await post(bus, "after")
            sent += 1
        held = await redis.xlen("devbus:events")
        assert held == 3
        assert await retained_counts(bus) == (held, held, float(held))
    finally:
        await redis.aclose()
        server.kill()
