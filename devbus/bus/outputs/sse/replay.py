"""A resuming SSE stream's cursor: pages from the store, as fast as the client takes them, then live."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from aiohttp import web

from devbus.bus import pages
from devbus.bus.outputs.sse.fanout import Fanout
from devbus.bus.outputs.sse.outlet import Outlet
from devbus.bus.pages import PAGE_BYTES, PAGE_EVENTS, write_or_stall
from devbus.bus.record import Record
from devbus.bus.store.base import Resume, Store
from devbus.envelope import Event, encode_json, sse_frame
from devbus.errors import StoreUnavailable

__all__ = ["GAP", "Replay", "gap_event"]

GAP = "devbus.gap"
RETRY_FIRST = 0.1  # seconds before reading again from a store that is away, doubling
RETRY_MAX = 2.0


def gap_event(since: str, resume_from: str, *, run: str, timestamp: str) -> Event:
    """The control event that tells a client events after ``since`` may be missing."""
    # It carries the id just before the oldest retained event, so a client that
    # reconnects again resumes cleanly instead of seeing a gap twice.
    return Event(
        id=resume_from,
        type=GAP,
        data={"last_event_id": since, "resume_from": resume_from, "run": run},
        timestamp=timestamp,
        source="devbus",
    )


class Replay:
    """Send what a client missed after its id, page by page, then hand it to the live fan-out.

    The cursor reads the store only when the client has taken the previous page.
    Once a page shows it is near the head, the outlet joins the live group with an
    anchor: records delivered from then on are queued in the outlet (bounded by its
    buffer), and the first of them, the anchor, is where reading the store stops.
    Every record before the anchor comes from the store, every one from it on from
    the fan-out: no duplicate and no gap, however records and reads interleave.
    """

    def __init__(
        self,
        store: Store,
        fanout: Fanout,
        *,
        now: Callable[[], str],
        response: web.StreamResponse,
        transport: asyncio.Transport,
        outlet: Outlet,
    ) -> None:
        self._store = store
        self._fanout = fanout
        self._now = now
        self._response = response
        self._transport = transport
        self._outlet = outlet

    async def run(self, since: str, resume: Resume) -> None:
        """Replay from ``resume``, where the store resolved ``since`` (a gap event first); return once live."""
        transport = self._transport
        # While replaying, wait for the socket once a page is buffered, not the
        # default 64 KiB more: a client that does not read holds one page.
        transport.set_write_buffer_limits(high=PAGE_BYTES)
        try:
            await self._replay(since, resume)
        finally:
            if not transport.is_closing():
                transport.set_write_buffer_limits()

    async def _replay(self, since: str, resume: Resume) -> None:
        outlet = self._outlet
        if resume.gap:
            gap = gap_event(since, resume.after, run=self._store.run, timestamp=self._now())
            outlet.preload(sse_frame(encode_json(gap), event_id=gap.id, name=GAP if outlet.named else None))
        await self._write(outlet.take_now())
        after = resume.after
        joined = False
        while not outlet.closed:
            page = await self._read_after(after)
            if outlet.closed:
                return
            done = False
            if joined:
                anchor = outlet.anchor
                cut = next((i for i, r in enumerate(page) if r.id == anchor), None) if anchor else None
                if cut is not None or not page:
                    page, done = page[:cut], True
            elif sum(len(r.json) for r in page) < PAGE_BYTES // 2 and len(page) < PAGE_EVENTS // 2:
                # Near the head: from here on the fan-out queues what is delivered.
                self._fanout.join(outlet, anchor=True)
                joined = True
            if page:
                after = page[-1].id
                await self._write(self._frames(page))
            if done:
                return
            # A page per loop turn at most: a long replay must not hold up every other client.
            await asyncio.sleep(0)

    async def _read_after(self, after: str) -> list[Record]:
        """The next page; while the store is away, wait for it with the stream open, as a live stream does."""
        delay = RETRY_FIRST
        while True:
            try:
                return await self._store.read_after(after, limit=PAGE_EVENTS, max_bytes=PAGE_BYTES)
            except StoreUnavailable:
                if self._outlet.closed or self._transport.is_closing():
                    return []
                # The heartbeat goes on meanwhile, so a client that left is noticed and closes the outlet.
                await asyncio.sleep(delay)
                delay = min(delay * 2, RETRY_MAX)

    def _frames(self, page: list[Record]) -> bytes:
        outlet = self._outlet
        match = outlet.type_filter
        if outlet.named:
            frames = [sse_frame(r.json, event_id=r.id, name=r.type) for r in page if match(r.type)]
        else:
            frames = [sse_frame(r.json, event_id=r.id) for r in page if match(r.type)]
        return b"".join(frames)

    async def _write(self, chunk: bytes) -> None:
        self._fanout.budget.charge(len(chunk))
        if chunk and not await write_or_stall(self._response, chunk):
            self._fanout.evict(self._outlet, why=f"took nothing of its replay for {pages.PAGE_STALL:g} s")
