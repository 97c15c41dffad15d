"""The SSE response with a heartbeat that no client turns into an event.

aiohttp-sse pings with ``: ping`` and a blank line. A blank line is what dispatches an
event, and clients that keep the last event id across events (httpx-sse,
@microsoft/fetch-event-source) then yield an empty message, which an app doing
``JSON.parse(msg.data)`` chokes on. A comment line alone is valid SSE (WHATWG HTML,
"Parsing an event stream": a line starting with a colon is ignored; only an empty
line dispatches), keeps the connection as alive, and is dispatched by nobody.
"""

from __future__ import annotations

import asyncio

from aiohttp_sse import EventSourceResponse

__all__ = ["HEARTBEAT", "HeartbeatResponse"]

HEARTBEAT = b": ping\n"


class HeartbeatResponse(EventSourceResponse):
    """EventSourceResponse whose heartbeat is one comment line, with no blank line after it.

    This overrides aiohttp-sse's private ``_ping`` (its loop as of 3.0, with another
    message); tests/test_sse.py's heartbeat test sees the bytes on the wire if that changes.
    """

    async def _ping(self) -> None:
        while True:
            await asyncio.sleep(self._ping_interval)
            try:
                async with asyncio.timeout(self._send_timeout):
                    await self.write(HEARTBEAT)
            except TimeoutError:
                self._abort_transport()
                break
            except (ConnectionResetError, RuntimeError):
                # RuntimeError: writing after EOF.
                break
