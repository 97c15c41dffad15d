"""What `devbus run` prints per event: a compact line each, bursts folded per second.

The printer is told each batch by the SSE fan-out, with how many subscribers
each record reached (a :data:`~devbus.bus.record.ReachReport`), so a line can say it.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Callable, Sequence

from devbus.bus.record import Record
from devbus.text import cut, cut_left, plural

__all__ = ["EventPrinter"]

LINES_PER_SECOND = 10
TYPE_WIDTH = 32  # types are cut to this, ids to ID_WIDTH, so every line keeps its columns
ID_WIDTH = 16  # a memory or SQLite id up to sequence 9,999,999, a Redis stream id up to the year 2286
SOURCE_WIDTH = 10  # the source column's width, grown to the longest source seen (up to MAX_SOURCE_WIDTH)
MAX_SOURCE_WIDTH = 40


class EventPrinter:
    """Print up to LINES_PER_SECOND events a second, then one summary line for the rest."""

    def __init__(self, write: Callable[[str], None]) -> None:
        self._write = write
        self._second = 0
        self._printed = 0
        self._folded: Counter[str] = Counter()
        self._flush: asyncio.TimerHandle | None = None
        self._source_width = SOURCE_WIDTH

    def __call__(self, batch: Sequence[Record], reached: Sequence[int]) -> None:
        now = time.time()
        second = int(now)
        if second != self._second:
            self._summarize()
            self._second = second
            self._printed = 0
        for record, count in zip(batch, reached, strict=True):
            if self._printed < LINES_PER_SECOND:
                self._printed += 1
                self._write(self._line(record, count))
            else:
                self._folded[record.type] += 1
        if self._folded and self._flush is None:
            self._flush = asyncio.get_running_loop().call_later(second + 1 - now, self._summarize)

    def _line(self, record: Record, reached: int) -> str:
        event = record.event
        clock = event.timestamp[11:23]
        subscribers = plural(max(reached, 0), "subscriber")
        # Grow the column rather than shift every later one; a very long source is cut.
        self._source_width = max(self._source_width, min(len(event.source), MAX_SOURCE_WIDTH))
        source = cut(event.source, MAX_SOURCE_WIDTH)
        width = self._source_width
        # An id keeps its end: the sequence number is what tells one event from the next.
        event_type, event_id = cut(event.type, TYPE_WIDTH), cut_left(event.id, ID_WIDTH)
        return f"{clock}  {event_type:<{TYPE_WIDTH}} {source:<{width}} {event_id:<{ID_WIDTH}} → {subscribers}"

    def _summarize(self) -> None:
        if self._flush is not None:
            self._flush.cancel()
            self._flush = None
        if not self._folded:
            return
        total = sum(self._folded.values())
        top = ", ".join(f"{name} ×{count}" for name, count in self._folded.most_common(3))
        more = f", +{plural(len(self._folded) - 3, 'more type')}" if len(self._folded) > 3 else ""
        self._write(f"… +{plural(total, 'more event')} this second ({top}{more})")
        self._folded.clear()
