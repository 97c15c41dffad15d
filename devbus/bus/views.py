"""HTTP reads: history, health, metrics and the static browser files."""

from __future__ import annotations

import json
import time
from collections.abc import Awaitable, Callable
from importlib import resources

from aiohttp import web

from devbus import __version__
from devbus.bus.keys import DISPATCHER, FANOUT, FORWARDER, METRICS, SETTINGS, STARTED
from devbus.bus.metrics import CONTENT_TYPE_LATEST
from devbus.bus.store.base import Record, Store
from devbus.errors import InvalidEvent
from devbus.typefilter import TypeFilter, parse_patterns

__all__ = ["health", "history", "metrics", "static_file"]

DEFAULT_HISTORY_LIMIT = 100
HISTORY_PAGE = 1000  # records read from the store at a time


def _limit(request: web.Request) -> int:
    raw = request.query.get("limit", str(DEFAULT_HISTORY_LIMIT))
    maximum = request.app[SETTINGS].history
    if not raw.isdigit() or not 1 <= int(raw) <= maximum:
        raise InvalidEvent(f"`limit` must be a whole number from 1 to {maximum} (got {raw!r})")
    return int(raw)


async def _oldest_after(store: Store, after: str, *, limit: int, max_bytes: int, match: TypeFilter) -> list[Record]:
    picked: list[Record] = []
    size = 0
    while len(picked) < limit:
        page = await store.read_after(after, limit=HISTORY_PAGE, max_bytes=max_bytes)
        for record in page:
            if match(record.type):
                size += len(record.json)
                if size > max_bytes and picked:
                    return picked
                picked.append(record)
                if len(picked) >= limit:
                    break
        if not page:
            break
        after = page[-1].id
    return picked


async def _newest(store: Store, *, limit: int, max_bytes: int, match: TypeFilter) -> list[Record]:
    picked: list[Record] = []
    size = 0
    before = None
    while len(picked) < limit:
        page = await store.read_before(before, limit=HISTORY_PAGE, max_bytes=max_bytes)
        for record in reversed(page):
            if match(record.type):
                size += len(record.json)
                if size > max_bytes and picked:
                    picked.reverse()
                    return picked
                picked.append(record)
                if len(picked) >= limit:
                    break
        if not page:
            break
        before = page[0].id
    picked.reverse()
    return picked


async def history(request: web.Request) -> web.Response:
    """Return retained events, oldest first, filtered by type and resume id, at most one page of bytes."""
    dispatcher = request.app[DISPATCHER]
    store = dispatcher.store
    type_filter = TypeFilter(parse_patterns(request.query.getall("types", [])))
    limit = _limit(request)
    # What one request may hold: the same bound as one subscriber's buffer.
    max_bytes = request.app[SETTINGS].subscriber_buffer
    since = request.query.get("since")
    if since:
        if not store.is_id(since):
            raise InvalidEvent(f"`since` must be an event id such as {dispatcher.last_id or 'abc-1'!r} (got {since!r})")
        # An id from another run means everything retained is new to the caller.
        resume = await store.resolve(since)
        records = await _oldest_after(store, resume.after, limit=limit, max_bytes=max_bytes, match=type_filter)
    else:
        records = await _newest(store, limit=limit, max_bytes=max_bytes, match=type_filter)
    body = b'{"events":[' + b",".join(r.json for r in records) + b"]}"
    return web.Response(body=body, content_type="application/json")


async def health(request: web.Request) -> web.Response:
    """Report liveness and a few numbers; needs no token."""
    dispatcher = request.app[DISPATCHER]
    return web.json_response(
        {
            "status": "ok",
            "version": __version__,
            "uptime_s": round(time.monotonic() - request.app[STARTED], 3),
            "subscribers": request.app[FANOUT].subscribers,
            "events": dispatcher.total,
            "retained": len(dispatcher.store),
            "run": dispatcher.run,
            "last_id": dispatcher.last_id,
            "store": dispatcher.store.status(),
            "forward": [target.status() for target in request.app[FORWARDER].targets],
        }
    )


async def metrics(request: web.Request) -> web.Response:
    """Expose Prometheus metrics."""
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
