"""404 and 405 as JSON errors, like every other refusal of the bus."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from aiohttp import web

from devbus.bus.keys import SETTINGS

__all__ = ["unrouted_as_json"]

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@web.middleware
async def unrouted_as_json(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Answer a path or method the router does not know with ``{"success": false, "error"}``."""
    try:
        return await handler(request)
    except web.HTTPMethodNotAllowed as exc:
        allowed = ", ".join(sorted(exc.allowed_methods))
        return web.json_response(
            {"success": False, "error": f"{request.method} is not allowed on {request.path}; use {allowed}"},
            status=405,
            headers={"Allow": allowed},
        )
    except web.HTTPNotFound:
        api = request.app[SETTINGS].api
        return web.json_response(
            {
                "success": False,
                "error": f"Nothing at {request.path}; the API is {api}/webhook, /trigger, /batch, /events, "
                "/history and /health, the dashboard is /",
            },
            status=404,
        )
