"""--token over ZeroMQ: ingest messages must carry it; the clients send it."""

from __future__ import annotations

import msgspec
import pytest
import zmq
import zmq.asyncio
from support import WAIT, BusFactory, connect_sender, history

import devbus
from devbus.bus.keys import ENDPOINTS
from devbus.frames import encode_frames

ANY_PORT = "tcp://127.0.0.1:*"
TOKEN = "zmq-s3cret"


async def test_ingest_drops_messages_without_the_token(make_bus: BusFactory, zmq_context: zmq.asyncio.Context) -> None:
    client = await make_bus(ingest=ANY_PORT, token=TOKEN)
    sender = await connect_sender(zmq_context, client.app[ENDPOINTS]["ingest"])
    await sender.send_multipart(encode_frames("no.token", {}))
    await sender.send_multipart(encode_frames("wrong.token", {}, token="guess"))
    await sender.send_multipart([b"int.token", msgspec.msgpack.encode({"type": "int.token", "token": 1})])
    await sender.send_multipart(encode_frames("right.token", {"n": 1}, token=TOKEN))
    # Messages from one sender arrive in order: once the last is in, the others were refused.
    [event] = await history(client, count=1, token=TOKEN)
    assert (event["type"], event["data"]) == ("right.token", {"n": 1})
    text = await (await client.get("/metrics", headers={"Authorization": f"Bearer {TOKEN}"})).text()
    assert 'devbus_rejected_total{reason="zmq_token"} 2.0' in text
    assert 'devbus_rejected_total{reason="zmq_shape"} 1.0' in text


async def test_publisher_sends_the_token_from_the_environment(
    make_bus: BusFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    client = await make_bus(ingest=ANY_PORT, token=TOKEN)
    monkeypatch.setenv("DEVBUS_TOKEN", TOKEN)
    async with devbus.AsyncPublisher(ingest=client.app[ENDPOINTS]["ingest"], timeout=WAIT) as publisher:
        await publisher.emit("from.env", {"ok": True})
    [event] = await history(client, count=1, token=TOKEN)
    assert event["type"] == "from.env"
