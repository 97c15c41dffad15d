"""The bare stack under devbus, as a benchmark yardstick: what aiohttp, msgspec and pyzmq cost alone.

    python scripts/bare_stack.py post     # POST /api/dev/webhook: parse the JSON, answer JSON
    python scripts/bare_stack.py fanout   # a ZeroMQ SUB feeding SSE streams on GET /api/dev/events

Each binds free ports on 127.0.0.1 and prints ``listening on <port>`` (``fanout`` first
prints ``ingest tcp://127.0.0.1:<port>``). Nothing here checks, bounds or stores
anything: it is the least a server built on the same libraries must do, so that
devbus's rate over this one's says what devbus itself costs.

``fanout`` does what devbus's burst path does at its cheapest: it reads every message
the socket has (one loop turn), numbers and encodes each event once as an SSE frame,
and writes the joined frames, framed once as one HTTP chunk, once per subscriber.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import secrets
import time
from typing import Any

import msgspec
import zmq
from aiohttp import web

_decode_json = msgspec.json.decode
_encode_json = msgspec.json.encode
_decode_msgpack = msgspec.msgpack.decode
NOBLOCK = int(zmq.NOBLOCK)
READ_BURST = 5000  # messages read in one loop turn, as devbus's ingest reads at most a burst


async def webhook(request: web.Request) -> web.Response:
    """Parse the event and answer as devbus does (with no subscribers)."""
    event = _decode_json(await request.read())
    answer = {
        "success": True,
        "id": "bare-1",
        "message": f"Event {event['event_type']} broadcasted to 0 subscribers",
        "subscribers": 0,
    }
    return web.Response(body=_encode_json(answer), content_type="application/json")


class Fanout:
    """SSE subscribers fed from one ZeroMQ SUB socket: encode once, one write per subscriber."""

    def __init__(self) -> None:
        self.context = zmq.Context()
        self.sock = self.context.socket(zmq.SUB)
        self.sock.setsockopt(zmq.SUBSCRIBE, b"")
        self.sock.setsockopt(zmq.RCVHWM, 100_000)
        self.sock.bind("tcp://127.0.0.1:*")
        self.endpoint = self.sock.getsockopt_string(zmq.LAST_ENDPOINT)
        self.subscribers: set[asyncio.Transport] = set()
        self.run = secrets.token_hex(4)
        self.seq = 0

    def start(self) -> None:
        asyncio.get_running_loop().add_reader(self.sock.fileno(), self.read)

    def read(self) -> None:
        frames: list[bytes] = []
        recv = self.sock.recv
        now = time.strftime("%Y-%m-%dT%H:%M:%S.000000Z", time.gmtime())
        try:
            for _ in range(READ_BURST):
                event_type = recv(NOBLOCK)
                body: dict[str, Any] = _decode_msgpack(recv(NOBLOCK))
                self.seq += 1
                event_id = f"{self.run}-{self.seq}"
                envelope = {
                    "id": event_id,
                    "type": event_type.decode(),
                    "data": body.get("data") or {},
                    "timestamp": now,
                    "source": body.get("source") or "zmq",
                }
                frames.append(b"id: %b\ndata: %b\n\n" % (event_id.encode(), _encode_json(envelope)))
        except zmq.Again:
            pass
        if frames:
            # The streams are HTTP/1.1 chunked (aiohttp's default without a length): frame once, write to all.
            joined = b"".join(frames)
            chunk = b"%x\r\n%b\r\n" % (len(joined), joined)
            for transport in self.subscribers:
                transport.write(chunk)
        # The socket's descriptor is edge-triggered: look again until it has nothing.
        if self.sock.poll(0, zmq.POLLIN):
            asyncio.get_running_loop().call_soon(self.read)

    async def events(self, request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
        await response.prepare(request)
        await response.write(b'data: {"type":"connected"}\n\n')
        transport = request.transport
        assert transport is not None
        self.subscribers.add(transport)
        try:
            await asyncio.Future()  # until the client goes
        finally:
            self.subscribers.discard(transport)
        return response


async def main(mode: str) -> None:
    app = web.Application()
    if mode == "post":
        app.router.add_post("/api/dev/webhook", webhook)
    else:
        fanout = Fanout()
        app.router.add_get("/api/dev/events", fanout.events)
        print(f"ingest {fanout.endpoint}", flush=True)
    runner = web.AppRunner(app, access_log=None, handler_cancellation=True)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, backlog=2048)
    await site.start()
    if mode != "post":
        fanout.start()
    print(f"listening on {runner.addresses[0][1]}", flush=True)
    try:
        await asyncio.Future()
    finally:
        await runner.cleanup()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("mode", choices=["post", "fanout"])
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(main(parser.parse_args().mode))
