"""Acknowledged ZeroMQ publishing, the bus's side: hello, acks, repeats, gaps, refusals, per store."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any

import msgspec
import pytest
import zmq
import zmq.asyncio
from aiohttp.test_utils import TestClient
from support import WAIT, BusFactory, RedisServer, eventually, history

from devbus.bus.budget import MemoryBudget
from devbus.bus.connection_budget import ConnectionBudget
from devbus.bus.dispatcher import Dispatcher
from devbus.bus.inputs import acks
from devbus.bus.inputs.zeromq import Ingest
from devbus.bus.keys import DISPATCHER, ENDPOINTS
from devbus.bus.metrics import Metrics
from devbus.bus.store.memory import MemoryStore
from devbus.frames import Ack, decode_ack, encode_frames, encode_hello, seq_frame
from devbus.zmtp import GREETING, FrameReader, Rejected, message, ready

ANY_PORT = "tcp://127.0.0.1:*"

Client = TestClient[Any, Any]


def event(seq: int, n: int | None = None) -> list[bytes]:
    """An acknowledged sender's event: [type, body, seq]."""
    return [*encode_frames("acked.event", {"n": seq if n is None else n}), seq_frame(seq)]


class Producer:
    """A raw DEALER speaking the acknowledged protocol by hand."""

    def __init__(self, context: zmq.asyncio.Context, endpoint: str, producer: str = "producer-1") -> None:
        self.socket = context.socket(zmq.DEALER)
        self.socket.setsockopt(zmq.LINGER, 0)
        self.socket.connect(endpoint)
        self.producer = producer

    async def hello(self, next_seq: int = 1) -> Ack:
        await self.socket.send_multipart(encode_hello(self.producer, next_seq))
        return await self.ack()

    async def send(self, *messages: list[bytes]) -> None:
        for frames in messages:
            await self.socket.send_multipart(frames)

    async def ack(self, *, within: float = WAIT) -> Ack:
        async with asyncio.timeout(within):
            head, body = await self.socket.recv_multipart()
        assert head == b"devbus.ack"
        return decode_ack(body)

    async def acks_until(self, seq: int) -> list[Ack]:
        """Every ack up to the one that settles ``seq``."""
        acks = [await self.ack()]
        while acks[-1].seq < seq:
            acks.append(await self.ack())
        return acks

    def close(self) -> None:
        self.socket.close(linger=0)


@pytest.fixture
async def producers(zmq_context: zmq.asyncio.Context) -> AsyncIterator[Callable[..., Producer]]:
    opened: list[Producer] = []

    def factory(endpoint: str, producer: str = "producer-1") -> Producer:
        opened.append(Producer(zmq_context, endpoint, producer))
        return opened[-1]

    yield factory
    for producer in opened:
        producer.close()


async def metric(client: Client, line: str) -> str:
    text = await (await client.get("/metrics")).text()
    return next((row.split()[-1] for row in text.splitlines() if row.startswith(line)), "0")


async def test_a_dealer_is_answered_as_a_router_and_a_pub_as_a_sub(make_bus: BusFactory) -> None:
    """The bus's READY depends on the peer's: it is sent once the peer's READY is read."""
    client = await make_bus(ingest=ANY_PORT)
    host, _, port = client.app[ENDPOINTS]["ingest"].removeprefix("tcp://").rpartition(":")
    for ours, theirs, then in [(b"DEALER", b"ROUTER", []), (b"PUB", b"SUB", [[b"\x01"]])]:
        reader, writer = await asyncio.open_connection(host, int(port))
        writer.write(GREETING + ready(ours))
        wire = b""
        expected = GREETING + ready(theirs) + b"".join(message(frames) for frames in then)
        async with asyncio.timeout(WAIT):
            while len(wire) < len(expected):
                wire += await reader.read(4096)
        assert wire == expected
        writer.close()


async def test_each_committed_batch_is_acknowledged_with_the_highest_seq_it_settled(
    make_bus: BusFactory, producers: Callable[..., Producer]
) -> None:
    client = await make_bus(ingest=ANY_PORT)
    sender = producers(client.app[ENDPOINTS]["ingest"])
    assert await sender.hello() == Ack(0, resend=True)  # nothing stored yet: send from 1
    await sender.send(*(event(seq) for seq in range(1, 3001)))
    acks = await sender.acks_until(3000)
    assert [ack.seq for ack in acks] == sorted({ack.seq for ack in acks})  # increasing
    assert acks[-1] == Ack(3000)
    assert len(acks) < 300  # one per batch read, not one per event
    events = await history(client, count=3000)
    assert [e["data"]["n"] for e in events] == list(range(1, 3001))


async def test_a_repeat_is_acknowledged_not_stored_and_a_gap_asks_once_for_the_rest(
    make_bus: BusFactory, producers: Callable[..., Producer]
) -> None:
    client = await make_bus(ingest=ANY_PORT)
    sender = producers(client.app[ENDPOINTS]["ingest"])
    await sender.hello()
    await sender.send(*(event(seq) for seq in range(1, 6)))
    assert (await sender.acks_until(5))[-1] == Ack(5)
    await sender.send(event(3), event(4))  # repeats
    assert await sender.ack() == Ack(5)
    await sender.send(event(8), event(9), event(12))  # a gap: 6 and 7 never came
    # The repeats may have come in two reads, each acknowledged: the ask follows those.
    acks = [await sender.ack()]
    while not acks[-1].resend:
        acks.append(await sender.ack())
    assert acks == [Ack(5)] * (len(acks) - 1) + [Ack(5, resend=True)]
    assert len(acks) <= 2
    await sender.send(event(13))  # still out of order: skipped without another ask
    await sender.send(*(event(seq) for seq in range(6, 10)))
    later = await sender.acks_until(9)
    assert later[-1] == Ack(9)
    assert not any(ack.resend for ack in later)
    events = await history(client, count=9)
    assert [e["data"]["n"] for e in events] == list(range(1, 10))
    assert await metric(client, "devbus_repeats_total") == "2.0"  # 3 and 4 (8 and 9 were never taken)


async def test_refused_events_are_reported_once_in_the_ack_and_never_block_the_next(
    make_bus: BusFactory, producers: Callable[..., Producer]
) -> None:
    client = await make_bus(ingest=ANY_PORT, max_message=1000)
    sender = producers(client.app[ENDPOINTS]["ingest"])
    await sender.hello()
    await sender.send(
        event(1),
        [b"bad type", msgspec.msgpack.encode({"type": "bad type", "data": {}}), seq_frame(2)],
        [b"acked.event", b"\xc1", seq_frame(3)],  # not MessagePack
        [b"acked.event", b"x" * 2000, seq_frame(4)],  # over --max-message: refused by the reader
        encode_frames("acked.event", {"n": 5}),  # no seq frame
        event(6),
    )
    acks = await sender.acks_until(6)
    rejected = [entry for ack in acks for entry in ack.rejected]
    assert [(seq, reason) for seq, reason, _ in rejected] == [
        (2, "zmq_type"),
        (3, "zmq_msgpack"),
        (4, "zmq_oversize"),
        (5, "zmq_frames"),
    ]
    assert all(text for _, _, text in rejected)
    events = await history(client, count=2)
    assert [e["data"]["n"] for e in events] == [1, 6]


async def test_events_sent_before_the_hello_is_answered_are_taken_when_sent_again(
    make_bus: BusFactory, producers: Callable[..., Producer]
) -> None:
    client = await make_bus(ingest=ANY_PORT)
    sender = producers(client.app[ENDPOINTS]["ingest"])
    await sender.send(event(1), event(2))  # a reconnect raced the hello: not taken
    assert await sender.hello() == Ack(0, resend=True)
    await sender.send(event(3))  # sent before the welcome arrived: out of order, skipped
    await sender.send(event(1), event(2), event(3))
    assert (await sender.acks_until(3))[-1] == Ack(3)
    events = await history(client, count=3)
    assert [e["data"]["n"] for e in events] == [1, 2, 3]


@pytest.fixture(params=["memory", "sqlite", "redis"])
def store(request: pytest.FixtureRequest, tmp_path: Any) -> str:
    if request.param == "sqlite":
        return f"sqlite:{tmp_path / 'acks.db'}"
    if request.param == "redis":
        server: RedisServer = request.getfixturevalue("redis_server")
        return server.url
    return "memory"


async def test_a_producer_that_reconnects_resumes_after_its_last_stored_seq(
    make_bus: BusFactory, producers: Callable[..., Producer], store: str
) -> None:
    client = await make_bus(ingest=ANY_PORT, store=store)
    endpoint = client.app[ENDPOINTS]["ingest"]
    first = producers(endpoint)
    await first.hello()
    await first.send(*(event(seq) for seq in range(1, 101)))
    await first.acks_until(100)
    first.close()
    # A new connection of the same producer, which never saw those acks, sends everything again.
    second = producers(endpoint)
    assert await second.hello(next_seq=1) == Ack(100, resend=True)
    await second.send(*(event(seq) for seq in range(1, 151)))
    assert (await second.acks_until(150))[-1] == Ack(150)
    events = await history(client, count=150)
    assert [e["data"]["n"] for e in events] == list(range(1, 151))
    assert await client.app[DISPATCHER].producer_seq("producer-1") == 150


async def test_a_sender_holding_nothing_before_its_next_seq_resumes_there(
    make_bus: BusFactory, producers: Callable[..., Producer]
) -> None:
    """A producer the store does not know (a memory store restarted) resumes from what it still holds."""
    client = await make_bus(ingest=ANY_PORT)
    sender = producers(client.app[ENDPOINTS]["ingest"])
    assert await sender.hello(next_seq=501) == Ack(500, resend=True)
    await sender.send(event(501), event(502))
    assert (await sender.acks_until(502))[-1] == Ack(502)
    assert [e["data"]["n"] for e in await history(client, count=2)] == [501, 502]


async def test_a_hello_without_a_usable_producer_is_refused_with_error(
    make_bus: BusFactory, producers: Callable[..., Producer]
) -> None:
    client = await make_bus(ingest=ANY_PORT)
    host, _, port = client.app[ENDPOINTS]["ingest"].removeprefix("tcp://").rpartition(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    writer.write(GREETING + ready(b"DEALER") + message(encode_hello("has space", 1)))
    async with asyncio.timeout(WAIT):
        wire = await reader.read()  # until the bus closes
    writer.close()
    items = FrameReader(max_message=1 << 16, max_frames=2).feed(wire[len(GREETING) :])
    name, body = items[-1]  # type: ignore[misc]
    assert name == b"ERROR" and b"producer" in body
    assert await metric(client, 'devbus_rejected_total{reason="zmq_shape"}') == "1.0"


class NobodyBehind:
    """The burst gate's readers: none ever behind."""

    behind = 0

    def when_moved(self, callback: Callable[[], None]) -> Callable[[], None]:
        return lambda: None


async def test_a_sender_whose_socket_backs_up_with_acks_is_read_no_more_until_it_takes_them() -> None:
    """What waits for a sender is bounded: once asyncio says its socket is backed up (the write
    buffer past its high-water mark, after the kernel's), the bus reads nothing more from it, so
    it makes no more acks for it, and reads on once the socket drains."""
    dispatcher = Dispatcher(MemoryStore(history=1000), metrics=Metrics())
    await dispatcher.start()
    metrics = dispatcher.metrics
    budget = MemoryBudget(1 << 30, metrics=metrics)
    connections = ConnectionBudget(1000, idle_timeout=300.0, metrics=metrics)
    ingest = Ingest(
        dispatcher=dispatcher,
        readers=NobodyBehind(),
        metrics=metrics,
        budget=budget,
        connections=connections,
        max_size=1 << 20,
    )
    host, _, port = (await ingest.bind("tcp://127.0.0.1:*")).removeprefix("tcp://").rpartition(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    try:
        writer.write(GREETING + ready(b"DEALER") + message(encode_hello("slow-reader", 1)))
        welcome = (
            GREETING + ready(b"ROUTER") + message([b"devbus.ack", msgspec.msgpack.encode({"seq": 0, "resend": True})])
        )
        async with asyncio.timeout(WAIT):
            assert await reader.readexactly(len(welcome)) == welcome
        writer.write(message(event(1)))
        await eventually(lambda: asyncio.sleep(0, result=dispatcher.total == 1))
        [sender] = ingest._peers
        assert sender.transport is not None and sender.transport.is_reading()
        sender.pause_writing()  # what asyncio calls at the write buffer's high-water mark
        assert not sender.transport.is_reading()
        assert not sender.kept_waiting  # quiet by its own doing: it may still be closed as idle
        sender.resume_writing()  # ... and once it drained below the low-water mark
        assert sender.transport.is_reading()
        writer.write(message(event(2)))
        await eventually(lambda: asyncio.sleep(0, result=dispatcher.total == 2))
    finally:
        writer.close()
        await ingest.close()
        await dispatcher.stop()


def typed(seq: int, type_: str) -> list[bytes]:
    return [type_.encode(), msgspec.msgpack.encode({"type": type_, "data": {"n": seq}}), seq_frame(seq)]


READS = {  # after event 1
    "in-order": ([event(2), event(3), event(4)], [2, 3, 4], [], 0),
    "refused-body": ([event(2), typed(3, "bad type"), event(4)], [2, 4], [(3, "zmq_type")], 0),
    "refused-by-reader": (
        [event(2), Rejected("zmq_oversize", "too large"), event(4)],
        [2, 4],
        [(3, "zmq_oversize")],
        0,
    ),
    # 16 bytes then none: as many bytes as two seqs, but neither frame is one.
    "seq-frames-not-8-bytes": (
        [event(2), [*event(3)[:2], seq_frame(3) + seq_frame(4)], [*event(4)[:2], b""], event(5)],
        [2, 5],
        [(3, "zmq_frames"), (4, "zmq_frames")],
        0,
    ),
    "repeat": ([event(2), event(1), event(3)], [2, 3], [], 1),
    "gap-then-resend": ([event(2), event(4), event(5), event(3), event(4)], [2, 3, 4], [], 0),
    "second-hello": ([event(2), encode_hello("producer-1", 1), event(3)], [2, 3], [], 0),
}


@pytest.mark.parametrize(("items", "stored", "rejected", "repeats"), READS.values(), ids=READS.keys())
@pytest.mark.parametrize("split", ["one-read", "one-event-a-read"])
def test_what_a_sender_sent_is_sorted_the_same_however_it_was_read(
    items: list[list[bytes] | Rejected], stored: list[int], rejected: list[tuple[int, str]], repeats: int, split: str
) -> None:
    """A read of events in seq order is taken on a shorter path than one to sort event by event;
    both settle the same: what is stored, what is refused at which seq, what was a repeat."""
    counted: list[int] = []
    producer = acks.Producer(max_size=1000, token=None, reject=lambda reason, text: None, repeated=counted.append)
    assert producer.take([encode_hello("producer-1", 1)]) is None
    producer.welcome(0)
    first = producer.take([event(1)])  # what the welcome asked for
    assert first is not None and list(first.seqs) == [1] and not producer.waiting
    took: list[tuple[int, int]] = []
    refused: list[tuple[int, str]] = []
    settled = 1
    for read in [items] if split == "one-read" else [[item] for item in items]:
        batch = producer.take(read)
        assert batch is not None
        took += [(seq, draft.data["n"]) for seq, draft in zip(batch.seqs, batch.drafts, strict=True)]
        refused += [(seq, reason) for seq, reason, _ in batch.rejected]
        settled = max(settled, batch.settled)
    assert took == [(seq, seq) for seq in stored]
    assert refused == rejected
    assert settled == max(stored + [seq for seq, _ in rejected])
    assert sum(counted) == repeats
