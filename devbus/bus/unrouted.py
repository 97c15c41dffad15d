"""404 and 405 as JSON errors, like every other refusal of the bus: the catch-all route's handler."""

from __future__ import annotations

from aiohttp import hdrs, web

from devbus.bus.keys import SETTINGS

__all__ = ["CATCH_ALL", "unrouted"]

# Added last, for every method: the router tries it after every other route.
CATCH_ALL = "/{unrouted:.*}"


async def _allowed_methods(request: web.Request) -> set[str]:
    """The methods the other routes take on this request's path (none: the path is unknown)."""
    allowed: set[str] = set()
    for resource in request.app.router.resources():
        methods = (await resource.resolve(request))[1]
        if hdrs.METH_ANY not in methods:  # not the catch-all itself
            allowed |= methods
    return allowed


async def unrouted(request: web.Request) -> web.Response:
    """Answer a path or method no route takes with ``{"success": false, "error"}``, 404 or 405."""
    allowed = await _allowed_methods(request)
    if allowed:
        methods = ", ".join(sorted(allowed))
        return web.json_response(
            {"success": False, "error": f"{request.method} is not allowed on {request.path}; use {methods}"},
            status=405,
            headers={"Allow": methods},
        )
    api = request.app[SETTINGS].api
    return web.json_response(
        {
            "success": False,
            "error": f"Nothing at {request.path}; the API is {api}/webhook, /trigger, /batch, /events, "
            "/history and /health, the dashboard is /",
        },
        status=404,
    )
