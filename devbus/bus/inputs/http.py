"""The HTTP inputs: POST {prefix}/webhook, /trigger and /batch, answered once the store has the events.

The guard in front of them has checked Host, Origin, token and media type; the
body is read here, within --max-body bytes and --body-timeout seconds.
"""

from __future__ import annotations

import asyncio

from aiohttp import web

from devbus.bus.dispatcher import Dispatcher
from devbus.bus.inputs.reach import ReachCounts
from devbus.bus.record import Record
from devbus.envelope import decode_batch, decode_http_event
from devbus.errors import BodyTooLarge, RequestTimeout
from devbus.text import plural

__all__ = ["HttpInput", "read_body", "too_large"]


def too_large(limit: int) -> BodyTooLarge:
    """The refusal of a body over ``limit`` bytes."""
    return BodyTooLarge(f"Body is larger than the limit of {limit} bytes (--max-body); send less or raise the limit")


async def read_body(request: web.Request, *, limit: int, time_limit: float) -> bytes:
    """Read a POST body of at most ``limit`` bytes, all of it within ``time_limit`` seconds."""
    if request.content_length is not None and request.content_length > limit:
        raise too_large(limit)
    # Count what actually arrives too: a chunked body declares no length.
    chunks = []
    size = 0
    try:
        # A client that stalls part-way would otherwise hold up to --max-body for ever.
        async with asyncio.timeout(time_limit):
            while chunk := await request.content.readany():
                size += len(chunk)
                if size > limit:
                    raise too_large(limit)
                chunks.append(chunk)
    except TimeoutError:
        raise RequestTimeout(
            f"Body not received within {time_limit:g} seconds (--body-timeout); send the whole body at once"
        ) from None
    return b"".join(chunks)


class HttpInput:
    """The three POST views, as bound methods over the dispatcher and the fan-out's reach counts."""

    def __init__(self, dispatcher: Dispatcher, reach: ReachCounts, *, max_body: int, body_timeout: float) -> None:
        self._dispatcher = dispatcher
        self._reach = reach
        self._max_body = max_body
        self._body_timeout = body_timeout

    async def _body(self, request: web.Request) -> bytes:
        return await read_body(request, limit=self._max_body, time_limit=self._body_timeout)

    async def _publish_one(self, request: web.Request, *, default_source: str) -> tuple[Record, int]:
        draft = decode_http_event(await self._body(request), default_source=default_source)
        with self._reach.waiting():
            [record] = await self._dispatcher.publish([draft])
            return record, self._reach.of(record)

    async def webhook(self, request: web.Request) -> web.Response:
        """Broadcast one event (the old dev-webhook contract)."""
        record, reached = await self._publish_one(request, default_source="http")
        return web.json_response(
            {
                "success": True,
                "id": record.id,
                "message": f"Event {record.type} broadcasted to {plural(reached, 'subscriber')}",
                "subscribers": reached,
            }
        )

    async def trigger(self, request: web.Request) -> web.Response:
        """Broadcast one event sent by a backend or script."""
        record, reached = await self._publish_one(request, default_source="trigger")
        return web.json_response({"success": True, "id": record.id, "subscribers_notified": reached})

    async def batch(self, request: web.Request) -> web.Response:
        """Broadcast many events in order, all or none."""
        drafts = decode_batch(await self._body(request), default_source="http")
        records = await self._dispatcher.publish(drafts)
        return web.json_response({"success": True, "ids": [r.id for r in records]})
