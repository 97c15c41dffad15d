"""The HTTP inputs: POST {prefix}/webhook, /trigger and /batch, answered once the store has the events."""

from __future__ import annotations

from aiohttp import web

from devbus.bus.guard import read_body
from devbus.bus.keys import DISPATCHER, FANOUT
from devbus.envelope import decode_batch, decode_http_event
from devbus.text import plural

__all__ = ["batch", "trigger", "webhook"]


async def webhook(request: web.Request) -> web.Response:
    """Broadcast one event (the old dev-webhook contract)."""
    draft = decode_http_event(await read_body(request), default_source="http")
    [record] = await request.app[DISPATCHER].publish([draft])
    reached = request.app[FANOUT].reach(record)
    return web.json_response(
        {
            "success": True,
            "id": record.id,
            "message": f"Event {draft.type} broadcasted to {plural(reached, 'subscriber')}",
            "subscribers": reached,
        }
    )


async def trigger(request: web.Request) -> web.Response:
    """Broadcast one event sent by a backend or script."""
    draft = decode_http_event(await read_body(request), default_source="trigger")
    [record] = await request.app[DISPATCHER].publish([draft])
    return web.json_response(
        {"success": True, "id": record.id, "subscribers_notified": request.app[FANOUT].reach(record)}
    )


async def batch(request: web.Request) -> web.Response:
    """Broadcast many events in order, all or none."""
    drafts = decode_batch(await read_body(request), default_source="http")
    records = await request.app[DISPATCHER].publish(drafts)
    return web.json_response({"success": True, "ids": [r.id for r in records]})
