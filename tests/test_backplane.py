"""The bus's ZeroMQ sockets: ingest validation and batching, egress framing and filtering."""

from __future__ import annotations

import asyncio
import os
import re
from typing import Any

import msgspec
import pytest
import zmq
import zmq.asyncio
from support import WAIT, BusFactory, connect_sender, history, send_waiting

from devbus.bus.keys import DISPATCHER, ENDPOINTS
from devbus.client.subscriber import AsyncSubscriber, prefixes
from devbus.envelope import Draft
from devbus.frames import encode_frames

ANY_PORT = "tcp://127.0.0.1:*"


def valid(n: int) -> list[bytes]:
    return encode_frames("test.valid", {"n": n})


def msgpack(obj: object) -> bytes:
    return msgspec.msgpack.encode(obj)


async def test_banner_endpoints_are_the_bound_addresses(make_bus: BusFactory) -> None:
    client = await make_bus(ingest=ANY_PORT, egress=ANY_PORT)
    endpoints = client.app[ENDPOINTS]
    assert re.fullmatch(r"tcp://127\.0\.0\.1:\d+", endpoints["ingest"])
    assert re.fullmatch(r"tcp://127\.0\.0\.1:\d+", endpoints["egress"])
    assert endpoints["ingest"] != endpoints["egress"]


async def test_ipc_endpoints_work(make_bus: BusFactory, zmq_context: zmq.asyncio.Context, tmp_path: Any) -> None:
    endpoint = f"ipc://{tmp_path}/ingest.sock"
    client = await make_bus(ingest=endpoint)
    assert client.app[ENDPOINTS]["ingest"] == endpoint
    sender = await connect_sender(zmq_context, endpoint)
    await sender.send_multipart(encode_frames("ipc.works", {"ok": True}, source="tester"))
    [event] = await history(client, count=1)
    assert (event["type"], event["data"], event["source"]) == ("ipc.works", {"ok": True}, "tester")


async def test_garbage_between_valid_messages_is_counted_and_never_blocks_them(
    make_bus: BusFactory, zmq_context: zmq.asyncio.Context
) -> None:
    client = await make_bus(ingest=ANY_PORT, max_message=1000)
    endpoint = client.app[ENDPOINTS]["ingest"]
    sender = await connect_sender(zmq_context, endpoint)
    garbage: list[list[bytes]] = [
        [os.urandom(64)],  # one frame of random bytes
        [b"test.valid", msgpack({"type": "test.valid", "data": {}}), b"extra"],  # three frames
        [b"test.valid", b"\x82\xa4type\xc1"],  # not MessagePack (0xc1 is never valid)
        [b"test.valid", msgpack(["test.valid", {}])],  # MessagePack of the wrong shape
        [b"test.valid", msgpack({"type": "test.valid", "data": "text"})],  # data not a map
        [b"has space", msgpack({"type": "has space", "data": {}})],  # type breaks the rules
        [b"test.other", msgpack({"type": "test.valid", "data": {}})],  # frame and body disagree
        [b"t" * 500, msgpack({"type": "t", "data": {"pad": "x" * 500}})],  # each frame fits, both do not
    ]
    for n, junk in enumerate(garbage):
        await sender.send_multipart(valid(n))
        await sender.send_multipart(junk)
    await sender.send_multipart(valid(len(garbage)))
    # A single frame over the limit is skipped and counted; the bus carries on with everyone.
    rogue = await connect_sender(zmq_context, endpoint)
    await rogue.send_multipart([b"test.valid", b"\x00" * 5000])
    await sender.send_multipart(valid(len(garbage) + 1))

    events = await history(client, count=len(garbage) + 2)
    assert [e["data"] for e in events] == [{"n": n} for n in range(len(garbage) + 2)]
    assert {e["source"] for e in events} == {"zmq"}
    metrics = await (await client.get("/metrics")).text()
    expected = {"zmq_frames": 2, "zmq_msgpack": 1, "zmq_shape": 2, "zmq_type": 2, "zmq_oversize": 2}
    for reason, count in expected.items():
        assert f'devbus_rejected_total{{reason="{reason}"}} {count:.1f}' in metrics, reason


async def test_a_burst_is_published_in_batches_in_order(make_bus: BusFactory, zmq_context: zmq.asyncio.Context) -> None:
    client = await make_bus(ingest=ANY_PORT)
    batches: list[int] = []
    client.app[DISPATCHER].add_output(lambda batch: batches.append(len(batch)))
    sender = await connect_sender(zmq_context, client.app[ENDPOINTS]["ingest"])
    for n in range(5000):
        await send_waiting(sender, valid(n))
    events = await history(client, count=5000)
    assert [e["data"]["n"] for e in events[-1000:]] == list(range(4000, 5000))
    assert sum(batches) == 5000
    # Batching is the point: far fewer dispatcher calls than messages.
    assert len(batches) < 500, batches


async def test_a_sender_is_not_read_while_its_batch_is_being_committed(
    make_bus: BusFactory, zmq_context: zmq.asyncio.Context
) -> None:
    """A ZeroMQ message is taken once the store has committed it: never two of one sender's batches in flight."""
    client = await make_bus(ingest=ANY_PORT)
    store = client.app[DISPATCHER].store
    append = store.append
    loop = asyncio.get_running_loop()
    in_flight = 0
    most = 0

    def slow_commit(drafts: Any, timestamp: str, claim: Any = None) -> asyncio.Future[Any]:
        # The store's commit takes a few milliseconds, as a disk write would.
        nonlocal in_flight, most
        in_flight += 1
        most = max(most, in_flight)
        committed: asyncio.Future[Any] = loop.create_future()

        def done() -> None:
            nonlocal in_flight
            in_flight -= 1
            committed.set_result(append(drafts, timestamp, claim).result())

        loop.call_later(0.005, done)
        return committed

    store.append = slow_commit
    sender = await connect_sender(zmq_context, client.app[ENDPOINTS]["ingest"])
    for n in range(3000):
        await send_waiting(sender, valid(n))
    events = await history(client, count=3000)
    assert [e["data"]["n"] for e in events] == list(range(3000))
    assert most == 1


async def test_a_burst_into_a_sqlite_store_arrives_whole_and_in_order(
    make_bus: BusFactory, zmq_context: zmq.asyncio.Context, tmp_path: Any
) -> None:
    client = await make_bus(ingest=ANY_PORT, store=f"sqlite:{tmp_path / 'bus.db'}")
    sender = await connect_sender(zmq_context, client.app[ENDPOINTS]["ingest"])
    for n in range(5000):
        await send_waiting(sender, valid(n))
    events = await history(client, count=5000)
    assert [e["data"]["n"] for e in events] == list(range(5000))


@pytest.mark.parametrize(
    ("patterns", "expected"),
    [((), [b""]), (("agent.",), [b"agent."]), (("agent.*", "agent.created"), [b"agent."]), (("*.created",), [b""])],
    ids=["all", "prefix", "glob-and-exact", "leading-wildcard"],
)
def test_zeromq_prefixes_cover_the_patterns(patterns: tuple[str, ...], expected: list[bytes]) -> None:
    assert prefixes(patterns) == expected


async def test_egress_frames_are_type_and_msgpack_envelope(
    make_bus: BusFactory, zmq_context: zmq.asyncio.Context
) -> None:
    client = await make_bus(egress=ANY_PORT)
    listener = zmq_context.socket(zmq.SUB)
    listener.subscribe(b"agent.")
    listener.connect(client.app[ENDPOINTS]["egress"])
    dispatcher = client.app[DISPATCHER]
    # A SUB only receives once its subscription has reached the PUB: probe until then.
    async with asyncio.timeout(WAIT):
        while not await listener.poll(10):
            await client.post("/api/dev/trigger", json={"event_type": "agent.probe"})
    await listener.recv_multipart()
    while await listener.poll(50):
        await listener.recv_multipart()
    await client.post("/api/dev/trigger", json={"event_type": "agent.created", "data": {"id": 7}})
    async with asyncio.timeout(WAIT):
        head, body = await listener.recv_multipart()
    assert head == b"agent.created"
    envelope = msgspec.msgpack.decode(body)
    assert set(envelope) == {"id", "type", "data", "timestamp", "source"}
    assert (envelope["id"], envelope["data"], envelope["source"]) == (dispatcher.last_id, {"id": 7}, "trigger")


async def test_egress_subscriber_with_a_prefix_gets_exactly_the_matching_events(make_bus: BusFactory) -> None:
    client = await make_bus(egress=ANY_PORT)
    async with AsyncSubscriber(types=["agent.", "sync.*"], egress=client.app[ENDPOINTS]["egress"]) as subscriber:
        dispatcher = client.app[DISPATCHER]
        async with asyncio.timeout(WAIT):
            while True:
                await dispatcher.publish([Draft("sync.ping", {}, "test")])
                try:
                    async with asyncio.timeout(0.05):
                        await subscriber.receive()
                    break
                except TimeoutError:
                    continue
        sent = ["agent.created", "rental.created", "agents.bulk_created", "agent", "agent.deleted", "xagent.y"]
        await dispatcher.publish([Draft(t, {"i": i}, "test") for i, t in enumerate(sent)])
        await dispatcher.publish([Draft("sync.done", {}, "test")])
        received = []
        async with asyncio.timeout(WAIT):
            async for event in subscriber:
                if event.type == "sync.done":
                    break
                if event.type != "sync.ping":
                    received.append((event.type, event.data))
    assert received == [("agent.created", {"i": 0}), ("agent.deleted", {"i": 4})]
