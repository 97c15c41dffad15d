"""GET {prefix}/history: retained events read from the store page by page and streamed as the client takes them."""

from __future__ import annotations

from aiohttp import web

from devbus.bus.pages import PAGE_BYTES, PAGE_EVENTS, write_or_stall
from devbus.bus.store.base import Store
from devbus.envelope import check_event_id
from devbus.errors import InvalidEvent, StoreUnavailable
from devbus.typefilter import TypeFilter, parse_patterns

__all__ = ["History"]

DEFAULT_HISTORY_LIMIT = 100


def _limit(request: web.Request, maximum: int) -> int:
    raw = request.query.get("limit", str(DEFAULT_HISTORY_LIMIT))
    if not raw.isdigit() or not 1 <= int(raw) <= maximum:
        raise InvalidEvent(f"`limit` must be a whole number from 1 to {maximum} (got {raw!r})")
    return int(raw)


async def _oldest(store: Store) -> str:
    # An id the store does not know resolves to just before the oldest record retained.
    return (await store.resolve("")).after


async def _start_of_newest(store: Store, *, limit: int, match: TypeFilter) -> str:
    """The id to read after so that the newest ``limit`` matching events come next."""
    before = None
    found = 0
    start_in_next_page = False
    while True:
        page = await store.read_before(before, limit=PAGE_EVENTS, max_bytes=PAGE_BYTES)
        if not page:
            return await _oldest(store)
        if start_in_next_page:
            return page[-1].id
        for index in range(len(page) - 1, -1, -1):
            if match(page[index].type):
                found += 1
                if found == limit:
                    if index:
                        return page[index - 1].id
                    start_in_next_page = True
                    break
        before = page[0].id


class History:
    """The view of GET {prefix}/history over ``store``, answering at most ``max_limit`` (--history) events."""

    def __init__(self, store: Store, *, max_limit: int) -> None:
        self._store = store
        self._max_limit = max_limit

    async def handle(self, request: web.Request) -> web.StreamResponse:
        """Return retained events, oldest first, filtered by type; after ``since``, else the newest ``limit``.

        The body is read from the store and written a page at a time, each once the
        client has taken the previous one, so a request costs the bus one page however
        many events it asks for and whether or not it reads.
        """
        return await _answer(request, self._store, limit=_limit(request, self._max_limit))


async def _answer(request: web.Request, store: Store, *, limit: int) -> web.StreamResponse:
    match = TypeFilter(parse_patterns(request.query.getall("types", [])))
    since = request.query.get("since")
    if since:
        check_event_id(since, field="`since`", example=store.last_id)
        # An id from another run or store means everything retained is new to the caller.
        after = (await store.resolve(since)).after
    else:
        after = await _start_of_newest(store, limit=limit, match=match)
    # The first page is read before the 200 goes out: a store that is away is a plain 503.
    page = await store.read_after(after, limit=PAGE_EVENTS, max_bytes=PAGE_BYTES)
    response = web.StreamResponse(headers={"Content-Type": "application/json; charset=utf-8"})
    await response.prepare(request)
    separator = b'{"events":['
    sent = 0
    while page and sent < limit:
        picked = [r.json for r in page if match(r.type)][: limit - sent]
        if picked:
            sent += len(picked)
            if not await write_or_stall(response, separator + b",".join(picked)):
                return _cut(request, response)
            separator = b","
        if sent < limit:
            try:
                page = await store.read_after(page[-1].id, limit=PAGE_EVENTS, max_bytes=PAGE_BYTES)
            except StoreUnavailable:
                # Too late for a 503: end the body unfinished, so the client cannot take it for all.
                return _cut(request, response)
    await response.write(separator + b"]}" if sent == 0 else b"]}")
    await response.write_eof()
    return response


def _cut(request: web.Request, response: web.StreamResponse) -> web.StreamResponse:
    """Close the connection mid-body: the client sees an incomplete response, never a short list."""
    if request.transport is not None:
        request.transport.abort()
    return response
