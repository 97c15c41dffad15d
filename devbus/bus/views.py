"""HTTP reads: health, metrics and the static browser files."""

from __future__ import annotations

import json
import time
from collections.abc import Awaitable, Callable
from importlib import resources

from aiohttp import web

from devbus.bus.keys import BUDGET, CATALOGUE, CONNECTIONS, DISPATCHER, FANOUT, FORWARDER, METRICS, STARTED
from devbus.bus.metrics import CONTENT_TYPE_LATEST
from devbus.version import __version__

__all__ = ["health", "metrics", "static_file", "types"]


async def health(request: web.Request) -> web.Response:
    """Report liveness and a few numbers; needs no token."""
    dispatcher = request.app[DISPATCHER]
    await dispatcher.store.refresh()
    return web.json_response(
        {
            "status": "ok",
            "version": __version__,
            "uptime_s": round(time.monotonic() - request.app[STARTED], 3),
            "subscribers": request.app[FANOUT].subscribers,
            "connections": request.app[CONNECTIONS].status(),
            "events": dispatcher.total,
            "retained": len(dispatcher.store),
            "run": dispatcher.run,
            "last_id": dispatcher.last_id,
            "store": dispatcher.store.status(),
            "forward": [target.status() for target in request.app[FORWARDER].targets],
            "memory": request.app[BUDGET].status(),
        }
    )


async def types(request: web.Request) -> web.Response:
    """Describe every event type seen: counts, sources, an example and an inferred JSON Schema."""
    return web.Response(body=request.app[CATALOGUE].to_json(), content_type="application/json")


async def metrics(request: web.Request) -> web.Response:
    """Expose Prometheus metrics."""
    await request.app[DISPATCHER].store.refresh()
    body = request.app[METRICS].render()
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


_STATIC_TYPES = {
    "dashboard.html": "text/html",
    "dashboard.js": "text/javascript",
    "devbus.js": "text/javascript",
    "devbus.d.ts": "application/typescript",
}
# The browser files name the API prefix once, behind this marker, so the bus can serve them
# with its own --prefix.
_PREFIX_MARKER = b'/* devbus:prefix */ "/api/dev"'


def static_file(name: str, *, prefix: str = "/api/dev") -> Callable[[web.Request], Awaitable[web.Response]]:
    """Serve a file shipped in devbus/static, read once at startup, with the API prefix filled in."""
    body = resources.files("devbus").joinpath("static", name).read_bytes()
    body = body.replace(_PREFIX_MARKER, b"/* devbus:prefix */ " + json.dumps(prefix).encode())
    content_type = _STATIC_TYPES[name]

    async def handler(request: web.Request) -> web.Response:
        return web.Response(
            body=body, content_type=content_type, charset="utf-8", headers={"Cache-Control": "no-cache"}
        )

    return handler
