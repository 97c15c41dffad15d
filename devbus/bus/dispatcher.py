"""The one dispatcher: every input goes through it; it orders, records and fans out."""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections.abc import Callable, Sequence

from devbus.bus.metrics import Metrics
from devbus.bus.outputs.sse_buffer import Outlet
from devbus.bus.store.memory import Entry, History, format_id, parse_id
from devbus.envelope import Draft, Event, encode_json, sse_frame
from devbus.errors import TooManySubscribers
from devbus.typefilter import TypeFilter

__all__ = ["Dispatcher", "Listener", "Published"]

log = logging.getLogger(__name__)

GAP = "devbus.gap"


class Published:
    """An event as accepted, with how many subscribers it reached."""

    __slots__ = ("event", "reached")

    def __init__(self, event: Event, reached: int) -> None:
        self.event = event
        self.reached = reached


Listener = Callable[[Sequence[Published]], None]


class _Group:
    """Outlets that share a filter and framing, so matching and joining happen once."""

    __slots__ = ("named", "outlets", "type_filter")

    def __init__(self, type_filter: TypeFilter, named: bool) -> None:
        self.type_filter = type_filter
        self.named = named
        self.outlets: dict[Outlet, None] = {}


class _Clock:
    """ISO-8601 UTC timestamps with microseconds, formatting the seconds once each."""

    def __init__(self) -> None:
        self._second = -1
        self._prefix = ""

    def now(self) -> str:
        micros = time.time_ns() // 1000
        second, fraction = divmod(micros, 1_000_000)
        if second != self._second:
            self._second = second
            self._prefix = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
        return f"{self._prefix}.{fraction:06d}Z"


class Dispatcher:
    """Assign ids, stamp time, record history and fan out, all on the running loop."""

    def __init__(
        self,
        *,
        history: int,
        history_bytes: int | None = None,
        subscriber_buffer: int,
        max_subscribers: int,
        metrics: Metrics,
    ) -> None:
        self.run = secrets.token_hex(4)
        self.history = History(history, max_bytes=history_bytes)
        self.metrics = metrics
        self.total = 0
        self._seq = 0
        self._clock = _Clock()
        self._buffer = subscriber_buffer
        self._max_subscribers = max_subscribers
        self._groups: dict[tuple[tuple[str, ...], bool], _Group] = {}
        self._unflushed: dict[_Group, None] = {}
        self._count = 0
        self._listeners: list[Listener] = []
        metrics.watch(metrics.subscribers, lambda: self._count)
        metrics.watch(metrics.history, lambda: len(self.history))

    @property
    def subscribers(self) -> int:
        """Connected outlets."""
        return self._count

    def unsent(self) -> int:
        """Bytes subscribers have not taken yet, all together (a burst source may wait on it)."""
        return sum(outlet.unsent for group in self._groups.values() for outlet in group.outlets)

    @property
    def last_id(self) -> str | None:
        """The id of the newest event of this run."""
        return format_id(self.run, self._seq) if self._seq else None

    def add_listener(self, listener: Listener) -> Callable[[], None]:
        """Call ``listener`` with every accepted batch; return a function that removes it."""
        self._listeners.append(listener)
        return lambda: self._listeners.remove(listener)

    def publish(self, drafts: Sequence[Draft]) -> list[Published]:
        """Accept ``drafts`` in order and deliver them; return them as published."""
        entries: list[Entry] = []
        published: list[Published] = []
        sources: dict[str, int] = {}
        # One accepted batch is one moment: stamping it once keeps a burst cheap.
        timestamp = self._clock.now()
        for draft in drafts:
            self._seq += 1
            event = Event(
                id=format_id(self.run, self._seq),
                type=draft.type,
                data=draft.data,
                timestamp=timestamp,
                source=draft.source,
            )
            entry = Entry(self._seq, event.id, event.type, encode_json(event))
            self.history.append(entry)
            entries.append(entry)
            published.append(Published(event, 0))
            sources[draft.source] = sources.get(draft.source, 0) + 1
        # One counter update per source and batch: a labelled Prometheus
        # increment per event would cost more than the rest of publishing it.
        for source, count in sources.items():
            self.metrics.count_in(source, count)
        self.total += len(entries)
        self._fan_out(entries, published)
        for listener in self._listeners:
            try:
                listener(published)
            except Exception:
                log.exception("listener %r failed", listener)
        return published

    def _fan_out(self, entries: list[Entry], published: list[Published]) -> None:
        if not self._groups:
            return
        plain = [sse_frame(e.json, event_id=e.id) for e in entries]
        deliveries = 0
        for group in list(self._groups.values()):
            if not group.outlets:
                continue
            width = len(group.outlets)
            frames = []
            for index, entry in enumerate(entries):
                if group.type_filter(entry.type):
                    frames.append(
                        sse_frame(entry.json, event_id=entry.id, name=entry.type) if group.named else plain[index]
                    )
                    published[index].reached += width
            if not frames:
                continue
            chunk = frames[0] if len(frames) == 1 else b"".join(frames)
            deliveries += width * len(frames)
            for outlet in list(group.outlets):
                outlet.push(chunk)
            if not self._unflushed:
                self._schedule_flush()
            self._unflushed[group] = None
        if deliveries:
            self.metrics.deliveries.inc(deliveries)

    def _schedule_flush(self) -> None:
        # A request read in one loop turn publishes in the next (aiohttp starts a
        # task for it), so flushing one turn later lets requests that arrived
        # together share one write per subscriber instead of one write each.
        loop = asyncio.get_running_loop()
        loop.call_soon(loop.call_soon, self._flush)

    def _flush(self) -> None:
        # Everything published since the last flush leaves in one write per subscriber.
        groups, self._unflushed = self._unflushed, {}
        for group in groups:
            for outlet in list(group.outlets):
                outlet.flush()

    def subscribe(self, type_filter: TypeFilter, *, named: bool, since: str | None, first: bytes) -> Outlet:
        """Register a subscriber; queue ``first``, then any replay after ``since``."""
        if self._count >= self._max_subscribers:
            raise TooManySubscribers(
                f"The bus already has {self._count} subscribers (--max-subscribers); "
                "close some streams or raise the limit"
            )
        outlet = Outlet(type_filter, named=named, limit=self._buffer, on_evict=self._evicted)
        outlet.preload(first)
        if since is not None:
            for chunk in self._replay(outlet, since):
                outlet.preload(chunk)
        key = (type_filter.patterns, named)
        group = self._groups.get(key)
        if group is None:
            group = self._groups[key] = _Group(type_filter, named)
        group.outlets[outlet] = None
        self._count += 1
        return outlet

    def _replay(self, outlet: Outlet, since: str) -> list[bytes]:
        parsed = parse_id(since)
        seq = parsed[1] if parsed is not None and parsed[0] == self.run and parsed[1] <= self._seq else None
        chunks = []
        if seq is None or not self.history.retains_after(seq):
            seq = (self.history.first_seq or self._seq + 1) - 1
            chunks.append(self._gap_frame(since, seq, named=outlet.named))
        frames = [
            sse_frame(e.json, event_id=e.id, name=e.type if outlet.named else None)
            for e in self.history.after(seq)
            if outlet.type_filter(e.type)
        ]
        if frames:
            chunks.append(b"".join(frames))
        return chunks

    def _gap_frame(self, since: str, resume_seq: int, *, named: bool) -> bytes:
        # The gap frame carries the id just before the oldest retained event, so
        # a client that reconnects again resumes cleanly instead of seeing a gap twice.
        resume_id = format_id(self.run, resume_seq)
        event = Event(
            id=resume_id,
            type=GAP,
            data={"last_event_id": since, "resume_from": resume_id, "run": self.run},
            timestamp=self._clock.now(),
            source="devbus",
        )
        return sse_frame(encode_json(event), event_id=resume_id, name=GAP if named else None)

    def unsubscribe(self, outlet: Outlet) -> None:
        """Forget ``outlet``; safe to call twice."""
        key = (outlet.type_filter.patterns, outlet.named)
        group = self._groups.get(key)
        if group is not None and outlet in group.outlets:
            del group.outlets[outlet]
            self._count -= 1
            if not group.outlets:
                del self._groups[key]
        outlet.close()

    def _evicted(self, outlet: Outlet) -> None:
        log.warning("evicted a subscriber that fell %d bytes behind", self._buffer)
        self.metrics.evictions.inc()
        self.unsubscribe(outlet)

    def close(self) -> None:
        """Close every outlet, so that every stream ends after what it has pending."""
        for group in list(self._groups.values()):
            for outlet in list(group.outlets):
                outlet.close()
