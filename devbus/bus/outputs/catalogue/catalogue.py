"""The event catalogue: what each event type looks like, learned from every accepted batch.

An output among the others: the dispatcher hands it each accepted batch. Counting is done
per batch with C-level helpers; a payload's JSON Schema is merged (by genson) only when its
shape has not been seen for that type before, and in a burst only a sample of each batch is
looked at, so that the catalogue stays off the ingest path.

Memory is bounded: at most ``max_types`` types (later ones are counted, not catalogued), a
schema of at most ``max_schema_bytes`` (past it the type's schema stops learning), at most
``MAX_SHAPES`` remembered shapes and ``MAX_SOURCES`` sources per type, and an example payload
of at most ``MAX_EXAMPLE_BYTES``.

It never raises: the inputs refuse data nesting past ``MAX_DEPTH``, but a store can hold
older data, so a payload nesting deeper stops its type's schema from learning, as does any
failure to infer one; each is counted, and logged once (a traceback per event would be
hundreds of kilobytes of log).
"""

from __future__ import annotations

import itertools
import logging
import operator
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from typing import Any

import msgspec
from aiohttp import web

from devbus.bus.metrics import Metrics
from devbus.bus.outputs.catalogue.schema import Rate, TooDeep, merged_schema, shape
from devbus.bus.record import Record
from devbus.bus.store.base import Store
from devbus.envelope import Event
from devbus.nesting import format_key

__all__ = ["SHAPES_PER_SECOND", "Catalogue"]

log = logging.getLogger(__name__)

MAX_TYPES = 500
MAX_SCHEMA_BYTES = 16 * 1024
MAX_EXAMPLE_BYTES = 4 * 1024
MAX_SHAPES = 128
# Merging a new shape into a schema costs from 50 µs to a few milliseconds for a large one:
# merges may take this share of the loop's time (and this many seconds in a burst); a shape
# not merged for want of time is merged when it is seen again.
MERGE_CPU_SHARE = 0.05
MERGE_CPU_BURST_S = 0.25
MAX_SOURCES = 16
# Taking a payload's shape costs about a microsecond: up to this many a second (and as a
# burst) every payload is looked at; past it an evenly spaced sample of each batch, plus the
# first event of every new type, so that 100,000 events a second cost a few milliseconds.
SHAPES_PER_SECOND = 2000
# Seeding reads the store's history in pages of this size.
SEED_PAGE = 1000
SEED_PAGE_BYTES = 4 * 1024 * 1024

_type_of = operator.attrgetter("type")
_event_of = operator.attrgetter("event")


def _same(event: Event) -> Event:
    return event


_encode = msgspec.json.Encoder(order="sorted").encode
_decode = msgspec.json.decode
_encode_plain = msgspec.json.Encoder().encode  # keeps the order given: "type" first


class _Entry:
    """What the catalogue knows about one event type."""

    __slots__ = ("complete", "count", "example", "first_seen", "last_seen", "schema", "shapes", "sources")

    def __init__(self, timestamp: str) -> None:
        self.count = 0
        self.first_seen = timestamp
        self.last_seen = timestamp
        self.sources: set[str] = set()
        # Kept encoded: a schema as Python objects (or as genson's builder) takes ten to
        # twenty times the memory of its JSON.
        self.schema = b"{}"
        self.shapes: set[int] = set()  # hashes of the shapes merged so far
        self.example = b"null"
        self.complete = True  # False once the schema stopped learning (a bound was reached)


class Catalogue:
    """Count, describe and infer a JSON Schema for every event type the bus accepts."""

    def __init__(
        self,
        metrics: Metrics,
        *,
        max_types: int = MAX_TYPES,
        max_schema_bytes: int = MAX_SCHEMA_BYTES,
    ) -> None:
        self._entries: dict[str, _Entry] = {}
        self._metrics = metrics
        self._max_types = max_types
        self._max_schema_bytes = max_schema_bytes
        self._shapes = Rate(SHAPES_PER_SECOND, burst=SHAPES_PER_SECOND)
        self._merge_time = Rate(MERGE_CPU_SHARE, burst=MERGE_CPU_BURST_S)
        self._logged: set[str] = set()  # the reasons a schema stopped learning that were logged
        metrics.watch(metrics.catalogue_types, lambda: len(self._entries))

    def __len__(self) -> int:
        return len(self._entries)

    def __call__(self, records: Sequence[Record]) -> None:
        """Take one delivered batch of records, as every output does."""
        if len(records) == 1 and (entry := self._entries.get(records[0].type)) is not None:
            # One event of a known type (a POST): what _observe does for it, without its batch bookkeeping.
            event = records[0].event
            entry.count += 1
            entry.last_seen = event.timestamp
            if self._shapes.take_one():
                self._learn((event,))
        elif records:
            self._observe(records, _event_of, every=False)

    def observe(self, events: Sequence[Event], *, every: bool = False) -> None:
        """Count ``events`` (one batch, oldest first) and learn from their payloads (``every`` one, or a sample)."""
        if events:
            self._observe(events, _same, every=every)

    def _observe(self, items: Sequence[Any], event_of: Callable[[Any], Event], *, every: bool) -> None:
        # Only the type is read from every item (a slot of a record): the rest, from the sample.
        timestamp = event_of(items[-1]).timestamp
        entries = self._entries
        fresh: list[str] = []
        for event_type, count in Counter(map(_type_of, items)).items():
            entry = entries.get(event_type)
            if entry is None:
                if len(entries) >= self._max_types:
                    self._metrics.catalogue_skipped.labels("types").inc(count)
                    continue
                entry = entries[event_type] = _Entry(timestamp)
                fresh.append(event_type)
            entry.count += count
            entry.last_seen = timestamp
        firsts = [event_of(item) for item in self._first_of(items, fresh)] if fresh else []
        for event in firsts:
            entries[event.type].first_seen = event.timestamp
        allowed = len(items) if every else self._shapes.take(len(items))
        if allowed == len(items):
            sample = list(map(event_of, items))
        elif allowed == 0:
            sample = firsts
        else:
            sample = [*firsts, *map(event_of, items[:: -(-len(items) // allowed)])]
        self._learn(sample)

    def seed(self, events: Iterable[Event]) -> None:
        """Learn from events accepted before this catalogue started (the store's history)."""
        for _, batch in itertools.groupby(events, key=operator.attrgetter("timestamp")):
            self.observe(list(batch), every=True)

    async def seed_from(self, store: Store) -> None:
        """Learn what ``store`` retained when it opened, page by page, oldest first."""
        # Records after the newest one now are delivered to this output live: stop there.
        newest = store.last_id
        if newest is None:
            return
        after = (await store.resolve("")).after
        while True:
            page = await store.read_after(after, limit=SEED_PAGE, max_bytes=SEED_PAGE_BYTES)
            if not page:
                return
            ids = [record.id for record in page]
            if newest in ids:
                page = page[: ids.index(newest) + 1]
            self.seed(record.event for record in page)
            if len(page) < len(ids) or page[-1].id == newest:
                return
            after = page[-1].id

    def seeded_from(self, store: Store) -> Callable[[web.Application], AsyncIterator[None]]:
        """A cleanup context that seeds the catalogue from ``store`` before the bus takes events."""

        async def seeding(app: web.Application) -> AsyncIterator[None]:
            await self.seed_from(store)
            yield

        return seeding

    def _learn(self, sample: Iterable[Event]) -> None:
        entries = self._entries
        for event in sample:
            entry = entries.get(event.type)
            if entry is None:
                continue
            if len(entry.sources) < MAX_SOURCES:
                entry.sources.add(event.source)
            if not entry.complete:
                continue
            try:
                self._learn_shape(entry, event.data)
            except TooDeep as exc:
                self._stop_learning(entry, event.type, "depth", str(exc))
            except Exception as exc:  # whatever the payload, the catalogue carries on
                self._stop_learning(entry, event.type, "error", f"{type(exc).__name__}: {exc}")

    def _learn_shape(self, entry: _Entry, data: dict[str, Any]) -> None:
        seen = hash(shape(data))
        if seen in entry.shapes:
            return
        if not self._merge_time.available():
            return  # not remembered: merged when it is seen again
        started = time.perf_counter()
        self._merge(entry, data)
        self._merge_time.spend(time.perf_counter() - started)
        if len(entry.shapes) >= MAX_SHAPES:
            # So many shapes is a map keyed by ids or the like: stop learning it.
            entry.complete = False
            self._metrics.catalogue_skipped.labels("shapes").inc()
        else:
            entry.shapes.add(seen)

    def _stop_learning(self, entry: _Entry, event_type: str, reason: str, why: str) -> None:
        """Keep ``entry``'s schema as it is, marked incomplete; count it, and log the first of each reason."""
        entry.complete = False
        entry.shapes.clear()
        self._metrics.catalogue_skipped.labels(reason).inc()
        if reason not in self._logged:
            self._logged.add(reason)
            log.warning(
                "the schema of %s stopped learning: %s (further ones are counted in "
                'devbus_catalogue_skipped_total{reason="%s"}, not logged)',
                format_key(event_type),
                why[:200],
                reason,
            )

    @staticmethod
    def _first_of(events: Sequence[Any], types: list[str]) -> list[Any]:
        """The first event of each of ``types`` (new in this batch): its first sighting, and its first shape."""
        wanted = set(types)
        found = []
        for event in events:
            if event.type in wanted:
                wanted.discard(event.type)
                found.append(event)
                if not wanted:
                    break
        return found

    def _merge(self, entry: _Entry, data: dict[str, Any]) -> None:
        schema = merged_schema(entry.schema, data)
        if len(schema) > self._max_schema_bytes:
            # Keep the last schema that fitted, and stop learning this type.
            entry.complete = False
            entry.shapes.clear()
            self._metrics.catalogue_skipped.labels("schema").inc()
            return
        entry.schema = schema
        example = _encode(data)
        if len(example) <= MAX_EXAMPLE_BYTES:
            entry.example = example

    def snapshot(self) -> dict[str, Any]:
        """Everything known, sorted by type, as JSON values."""
        answer: dict[str, Any] = _decode(self.to_json())
        return answer

    def to_json(self) -> bytes:
        """Everything known, sorted by type, as the JSON that GET /types answers."""
        # Schemas and examples are stored encoded and spliced in as they are.
        types = []
        for name in sorted(self._entries):
            entry = self._entries[name]
            types.append(
                {
                    "type": name,
                    "count": entry.count,
                    "first_seen": entry.first_seen,
                    "last_seen": entry.last_seen,
                    "sources": sorted(entry.sources),
                    "example": msgspec.Raw(entry.example),
                    "schema": msgspec.Raw(entry.schema),
                    "schema_complete": entry.complete,
                }
            )
        return _encode_plain(
            {
                "types": types,
                "limits": {
                    "types": self._max_types,
                    "schema_bytes": self._max_schema_bytes,
                    "example_bytes": MAX_EXAMPLE_BYTES,
                    "shapes": MAX_SHAPES,
                    "sources": MAX_SOURCES,
                },
            }
        )
