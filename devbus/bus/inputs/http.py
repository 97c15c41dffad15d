"""The HTTP inputs: POST {prefix}/webhook, /trigger and /batch."""

from __future__ import annotations

from aiohttp import web

from devbus.bus.guard import read_body
from devbus.bus.keys import DISPATCHER
from devbus.envelope import decode_batch, decode_http_event

__all__ = ["batch", "trigger", "webhook"]


async def webhook(request: web.Request) -> web.Response:
    """Broadcast one event (the old dev-webhook contract)."""
    draft = decode_http_event(await read_body(request), default_source="http")
    [published] = request.app[DISPATCHER].publish([draft])
    reached = published.reached
    return web.json_response(
        {
            "success": True,
            "id": published.event.id,
            "message": f"Event {draft.type} broadcasted to {reached} subscribers",
            "subscribers": reached,
        }
    )


async def trigger(request: web.Request) -> web.Response:
    """Broadcast one event sent by a backend or script."""
    draft = decode_http_event(await read_body(request), default_source="trigger")
    [published] = request.app[DISPATCHER].publish([draft])
    return web.json_response({"success": True, "id": published.event.id, "subscribers_notified": published.reached})


async def batch(request: web.Request) -> web.Response:
    """Broadcast many events in order, all or none."""
    drafts = decode_batch(await read_body(request), default_source="http")
    published = request.app[DISPATCHER].publish(drafts)
    return web.json_response({"success": True, "ids": [p.event.id for p in published]})
