"""The SSE output: delivered records framed once per group of like subscribers, one write each per flush."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence

from devbus.bus.budget import MemoryBudget
from devbus.bus.metrics import Metrics
from devbus.bus.outputs.sse.laggards import Laggards
from devbus.bus.outputs.sse.outlet import Outlet
from devbus.bus.record import ReachReport, Record
from devbus.envelope import sse_frame
from devbus.errors import TooManySubscribers
from devbus.typefilter import TypeFilter

__all__ = ["Fanout"]

log = logging.getLogger(__name__)

# Event types seen recently, each with the groups it matches. Types are few, but
# senders choose them: past this many the cache starts over rather than grow.
MAX_CACHED_TYPES = 1024


class _Group:
    """Outlets that share a filter and framing, so matching and framing happen once for all of them."""

    __slots__ = ("named", "outlets", "type_filter")

    def __init__(self, type_filter: TypeFilter, named: bool) -> None:
        self.type_filter = type_filter
        self.named = named
        self.outlets: dict[Outlet, None] = {}


class Fanout:
    """Every SSE subscriber's outlet, grouped by (filter, framing); an output of the dispatcher.

    A subscriber's connection counts against ``max_subscribers`` from
    :meth:`subscribe` until its handler calls :meth:`release`, even after it has
    been evicted, so that open connections never exceed the cap. What each one
    holds counts against the memory ``budget`` over the same span: its own bytes
    as a holder, and the chunks it shares with its group through the fan-out's
    pool, once per group (every outlet of a group was pushed the same chunk
    objects since it joined, so what they hold together is what the outlet
    furthest behind holds; 1,000 subscribers a burst behind hold one burst).
    """

    def __init__(self, *, subscriber_buffer: int, max_subscribers: int, metrics: Metrics, budget: MemoryBudget) -> None:
        self.metrics = metrics
        self.budget = budget
        self._buffer = subscriber_buffer
        self._max = max_subscribers
        self._outlets: dict[Outlet, None] = {}
        self._groups: dict[tuple[tuple[str, ...], bool], _Group] = {}
        self._by_type: dict[str, list[_Group]] = {}
        self._unflushed: dict[_Group, None] = {}
        self._anchoring: list[Outlet] = []
        self._reports: list[ReachReport] = []
        # Subscribers whose sockets are backed up, for the ZeroMQ ingest's burst gate.
        self.laggards = Laggards()
        metrics.watch(metrics.subscribers, lambda: len(self._outlets))
        budget.add_pool(self._shared_pending)

    @property
    def subscribers(self) -> int:
        """Open SSE connections (evicted ones count until their handler has ended)."""
        return len(self._outlets)

    def would_reach(self, event_type: str) -> int:
        """How many subscribers an event of ``event_type`` would be queued for now."""
        return sum(len(group.outlets) for group in self._matching(event_type))

    def report_to(self, report: ReachReport) -> Callable[[], None]:
        """Tell ``report``, after each batch, how many subscribers each record was queued for; return a remover."""
        self._reports.append(report)
        return lambda: self._reports.remove(report)

    def subscribe(self, type_filter: TypeFilter, *, named: bool) -> Outlet:
        """Open a slot for a subscriber (503 past the cap); it joins the live groups with :meth:`join`."""
        if len(self._outlets) >= self._max:
            raise TooManySubscribers(
                f"The bus already has {len(self._outlets)} subscribers (--max-subscribers); "
                "close some streams or raise the limit"
            )
        outlet = Outlet(
            type_filter,
            named=named,
            limit=self._buffer,
            on_evict=self.evict,
            laggards=self.laggards,
            charge=self.budget.charge,
        )
        self._outlets[outlet] = None
        self.budget.join(outlet)
        return outlet

    def join(self, outlet: Outlet, *, anchor: bool = False) -> None:
        """Queue every record delivered from now on for ``outlet``.

        With ``anchor``, the outlet also learns the id of the first record delivered
        after joining (``outlet.anchor``): a cursor still reading the store stops there.
        """
        if outlet.closed:
            return
        key = (outlet.type_filter.patterns, outlet.named)
        group = self._groups.get(key)
        if group is None:
            group = self._groups[key] = _Group(outlet.type_filter, outlet.named)
            self._by_type.clear()
        group.outlets[outlet] = None
        if anchor:
            self._anchoring.append(outlet)

    def _leave(self, outlet: Outlet) -> None:
        key = (outlet.type_filter.patterns, outlet.named)
        group = self._groups.get(key)
        if group is not None and outlet in group.outlets:
            del group.outlets[outlet]
            if not group.outlets:
                del self._groups[key]
                self._by_type.clear()
                self._unflushed.pop(group, None)

    def release(self, outlet: Outlet) -> None:
        """Forget ``outlet`` and free its slot, once its connection's handler has ended; safe to call twice."""
        self._leave(outlet)
        outlet.close()
        self._outlets.pop(outlet, None)
        self.budget.leave(outlet)

    def evict(self, outlet: Outlet, *, why: str = "") -> None:
        """Drop a subscriber that fell behind: its connection is closed now and its buffer freed."""
        outlet.evicted = True
        log.warning("evicted a subscriber that %s", why or f"fell {self._buffer} bytes behind")
        self.metrics.evictions.inc()
        self._leave(outlet)
        # Close the connection now: the peer is not reading, so waiting for its
        # buffer to drain would hold the socket (and its memory) indefinitely.
        outlet.abort()

    def _shared_pending(self) -> int:
        """Bytes of chunks pending for subscribers, each counted once: the most any outlet of a group holds."""
        return sum(max(outlet.shared for outlet in group.outlets) for group in self._groups.values())

    def _matching(self, event_type: str) -> list[_Group]:
        groups = self._by_type.get(event_type)
        if groups is None:
            if len(self._by_type) >= MAX_CACHED_TYPES:
                self._by_type.clear()
            groups = self._by_type[event_type] = [g for g in self._groups.values() if g.type_filter(event_type)]
        return groups

    def __call__(self, records: Sequence[Record]) -> None:
        """Queue each record for the subscribers whose filter matches it; flush one loop turn later."""
        if self._anchoring:
            first = records[0].id
            for outlet in self._anchoring:
                outlet.anchor = first
            self._anchoring.clear()
        if not self._groups:
            if self._reports:
                self._report(records, [0] * len(records))
            return
        chunks: dict[_Group, list[bytes]] = {}
        deliveries = 0
        counts = []
        for record in records:
            reached = 0
            plain = None
            for group in self._matching(record.type):
                if group.named:
                    frame = sse_frame(record.json, event_id=record.id, name=record.type)
                else:
                    if plain is None:
                        plain = sse_frame(record.json, event_id=record.id)
                    frame = plain
                frames = chunks.get(group)
                if frames is None:
                    chunks[group] = [frame]
                else:
                    frames.append(frame)
                reached += len(group.outlets)
            counts.append(reached)
            deliveries += reached
        if self._reports:
            self._report(records, counts)
        if not chunks:
            return
        if not self._unflushed:
            self._schedule_flush()
        whole = None  # every record, unnamed: the same chunk for every group that matched them all
        for group, frames in chunks.items():
            if len(frames) == 1:
                chunk = frames[0]
            elif len(frames) == len(records) and not group.named:
                chunk = whole = whole or b"".join(frames)
            else:
                chunk = b"".join(frames)
            # Pushing may evict an outlet, which leaves the group: iterate over a copy.
            for outlet in list(group.outlets):
                outlet.push(chunk)
            self._unflushed[group] = None
            # Held once for the group; a copy a writer comes to hold is charged where it is made.
            self.budget.charge(len(chunk))
        self.metrics.deliveries.inc(deliveries)

    def _report(self, records: Sequence[Record], counts: list[int]) -> None:
        for report in self._reports:
            try:
                report(records, counts)
            except Exception:
                log.exception("reach report %r failed", report)

    def _schedule_flush(self) -> None:
        # A request read in one loop turn publishes in the next (aiohttp starts a
        # task for it), so flushing one turn later lets requests that arrived
        # together share one write per subscriber instead of one write each.
        loop = asyncio.get_running_loop()
        loop.call_soon(loop.call_soon, self._flush)

    def _flush(self) -> None:
        # Everything delivered since the last flush leaves in one write per subscriber.
        groups, self._unflushed = self._unflushed, {}
        written = 0
        for group in groups:
            for outlet in list(group.outlets):
                written += outlet.flush()
        # What a socket does not take at once stays in asyncio's buffer: charged once for all.
        self.budget.charge(written)

    def close(self) -> None:
        """Close every outlet, so that every stream ends after what it has pending."""
        for outlet in list(self._outlets):
            outlet.close()
