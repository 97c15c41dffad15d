"""The SSE response: its headers, and a heartbeat that no client turns into an event.

aiohttp-sse pings with ``: ping`` and a blank line. A blank line is what dispatches an
event, and clients that keep the last event id across events (httpx-sse,
@microsoft/fetch-event-source) then yield an empty message, which an app doing
``JSON.parse(msg.data)`` chokes on. A comment line alone is valid SSE (WHATWG HTML,
"Parsing an event stream": a line starting with a colon is ignored; only an empty
line dispatches), keeps the connection as alive, and is dispatched by nobody.

So the heartbeat loop is ours, on aiohttp's public ``StreamResponse`` API: the events
themselves are framed by the SSE output, and nothing else of an SSE library is used.
"""

from __future__ import annotations

import asyncio

from aiohttp import web
from aiohttp.abc import AbstractStreamWriter

__all__ = ["HEARTBEAT", "SEND_TIMEOUT", "HeartbeatResponse"]

HEARTBEAT = b": ping\n"

# Seconds a heartbeat may wait for the socket to take it before the connection is
# aborted: a peer that reads nothing for this long is gone (aiohttp-sse's default).
SEND_TIMEOUT = 120.0

SSE_HEADERS = {
    "Content-Type": "text/event-stream",
    "Cache-Control": "no-cache",
    "Connection": "keep-alive",
    "X-Accel-Buffering": "no",  # nginx and others: pass each event on at once
}


class HeartbeatResponse(web.StreamResponse):
    """A streamed ``text/event-stream`` response that writes :data:`HEARTBEAT` every ``interval`` seconds.

    The heartbeat runs from :meth:`prepare` until :meth:`stop`, a failed write, or a
    write that takes over ``send_timeout``: then the connection is aborted, since a
    graceful close would wait for a peer that reads nothing.
    """

    def __init__(self, *, interval: float, send_timeout: float = SEND_TIMEOUT) -> None:
        if interval <= 0:
            raise ValueError("the heartbeat interval must be positive")
        super().__init__(status=200, headers=SSE_HEADERS)
        self.interval = interval
        self.send_timeout = send_timeout
        self._beating: asyncio.Task[None] | None = None

    async def prepare(self, request: web.BaseRequest) -> AbstractStreamWriter | None:
        """Send the headers (a body of unknown length: aiohttp chunks it) and start the heartbeat."""
        writer = await super().prepare(request)
        if self._beating is None:
            self._beating = asyncio.create_task(self._beat(request.transport))
        return writer

    async def stop(self) -> None:
        """Stop the heartbeat and wait for its task to end (a no-op before :meth:`prepare`)."""
        beating, self._beating = self._beating, None
        if beating is not None:
            beating.cancel()
            await asyncio.wait([beating])  # unlike awaiting it, lets a cancellation of ours through

    async def _beat(self, transport: asyncio.Transport | None) -> None:
        while True:
            await asyncio.sleep(self.interval)
            try:
                async with asyncio.timeout(self.send_timeout):
                    await self.write(HEARTBEAT)
            except TimeoutError:
                if transport is not None:
                    transport.abort()
                return
            except (ConnectionResetError, RuntimeError):
                return  # RuntimeError: the response was closed (written after EOF)
