"""The hand-rolled dev-webhook router devbus replaces, as a benchmark reference.

A minimal FastAPI app in the shape teams copy into their backends: one unbounded
``asyncio.Queue`` per SSE subscriber, ``json.dumps`` per event per subscriber, and a
``StreamingResponse`` generator per subscriber. Run it as ``python scripts/reference_app.py``:
it binds a free port on 127.0.0.1 and prints ``listening on <port>``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import socket
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import StreamingResponse

app = FastAPI()
subscribers: list[asyncio.Queue[dict[str, Any]]] = []


@app.post("/api/dev/webhook")
async def webhook(request: Request) -> dict[str, Any]:
    """Put the event on every subscriber's queue."""
    body = await request.json()
    event = {
        "type": body["event_type"],
        "data": body.get("data", {}),
        "timestamp": datetime.now(UTC).isoformat(),
    }
    for queue in subscribers:
        queue.put_nowait(event)
    return {
        "success": True,
        "message": f"Event {event['type']} broadcasted to {len(subscribers)} subscribers",
        "subscribers": len(subscribers),
    }


@app.get("/api/dev/events")
async def events() -> StreamingResponse:
    """Stream every event to this subscriber as SSE."""
    queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
    subscribers.append(queue)

    async def stream() -> AsyncIterator[str]:
        try:
            yield "data: " + json.dumps({"type": "connected", "message": "SSE connected"}) + "\n\n"
            while True:
                event = await queue.get()
                yield "data: " + json.dumps(event) + "\n\n"
        finally:
            subscribers.remove(queue)

    return StreamingResponse(stream(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"})


def main() -> None:
    """Serve the reference app on a free loopback port until SIGTERM."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args()
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", args.port))
    # Listening before uvicorn starts lets clients connect at once: the kernel
    # queues them until the server accepts.
    sock.listen(2048)
    print(f"listening on {sock.getsockname()[1]}", flush=True)
    config = uvicorn.Config(app, log_level="warning", access_log=False, backlog=2048, timeout_graceful_shutdown=1)
    uvicorn.Server(config).run(sockets=[sock])


if __name__ == "__main__":
    main()
