"""Reading the log for a client a page at a time, only as fast as the client takes each page.

A resuming SSE stream (``outputs/sse/replay.py``) and ``GET /history`` both read
the store in pages of at most PAGE_EVENTS records and PAGE_BYTES of JSON and write
each one only once the client has taken the previous one, so what one connection
costs the bus is its buffer plus one page, however much it asks for and whether
or not it reads.
"""

from __future__ import annotations

import asyncio

from aiohttp import web

__all__ = ["PAGE_BYTES", "PAGE_EVENTS", "PAGE_STALL", "write_or_stall"]

PAGE_EVENTS = 1000
PAGE_BYTES = 32 * 1024

# A client whose socket takes nothing of a page for this long is dropped: its
# buffers would otherwise be held for as long as it stays connected.
PAGE_STALL = 10.0


async def write_or_stall(response: web.StreamResponse, chunk: bytes) -> bool:
    """Write ``chunk`` and wait for the socket to take it; False if it took nothing for PAGE_STALL seconds."""
    try:
        async with asyncio.timeout(PAGE_STALL):
            await response.write(chunk)
    except TimeoutError:
        return False
    return True
