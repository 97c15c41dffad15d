"""The one dispatcher: every input goes through it; it stamps, appends to the store and notifies the outputs."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence

from devbus.bus.metrics import Metrics
from devbus.bus.record import Record
from devbus.bus.store.base import Appended, Claim, Store
from devbus.envelope import Draft

__all__ = ["Dispatcher", "Output"]

log = logging.getLogger(__name__)

# An output takes every delivered record, in the log's order, on the loop, without waiting:
# the SSE fan-out, ZeroMQ egress, forward targets, the console.
Output = Callable[[Sequence[Record]], None]


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
    """Stamp accepted drafts, append them to the store, and hand what the store delivers to every output.

    Outputs are called with the store's records (numbered, encoded once) in the
    log's order, which is the order of :meth:`publish` calls for a store of one
    process, and the stream's order for a store shared by several buses.
    """

    def __init__(self, store: Store, *, metrics: Metrics) -> None:
        self.store = store
        self.metrics = metrics
        self.total = 0
        self._clock = _Clock()
        self._outputs: list[Output] = []
        metrics.watch(metrics.history, lambda: len(self.store))

    @property
    def run(self) -> str:
        """The identity of the store's log, as clients see it."""
        return self.store.run

    @property
    def last_id(self) -> str | None:
        """The id of the newest event delivered."""
        return self.store.last_id

    def now(self) -> str:
        """The current time as events are stamped with it."""
        return self._clock.now()

    def add_output(self, output: Output) -> Callable[[], None]:
        """Call ``output`` with every delivered batch, in order; return a function that removes it."""
        self._outputs.append(output)
        return lambda: self._outputs.remove(output)

    async def start(self) -> None:
        """Open the store, delivering through this dispatcher."""
        await self.store.open(self.deliver)

    async def stop(self) -> None:
        """Commit what is in flight and close the store."""
        await self.store.close()

    async def producer_seq(self, producer: str) -> int:
        """The last seq the store has for a ZeroMQ producer (0 if none)."""
        return await self.store.producer_seq(producer)

    def publish(self, drafts: Sequence[Draft], claim: Claim | None = None) -> asyncio.Future[Appended]:
        """Append ``drafts`` in order (those ``claim`` lets through); the future resolves to their
        records once the store has committed them (see :class:`~devbus.bus.store.base.Appended`)."""
        # One accepted batch is one moment: stamping it once keeps a burst cheap.
        future = self.store.append(drafts, self._clock.now(), claim)
        if future.done():
            self._committed(future, drafts)
        else:
            future.add_done_callback(lambda done: self._committed(done, drafts))
        return future

    def _committed(self, future: asyncio.Future[Appended], drafts: Sequence[Draft]) -> None:
        if future.cancelled() or future.exception() is not None:
            return
        appended = future.result()
        if appended.replayed is not None:
            self.metrics.repeats.inc(len(drafts))
            return
        skipped = appended.skipped
        if skipped:
            self.metrics.repeats.inc(skipped)
        if len(appended) == 1:
            self.metrics.count_in(drafts[-1].source)  # what was skipped is a prefix
        elif appended:
            self._count_in(drafts[skipped:])

    def _count_in(self, drafts: Sequence[Draft]) -> None:
        # One counter update per source and batch, however many events it holds.
        sources: dict[str, int] = {}
        for draft in drafts:
            sources[draft.source] = sources.get(draft.source, 0) + 1
        for source, count in sources.items():
            self.metrics.count_in(source, count)

    def deliver(self, records: Sequence[Record]) -> None:
        """Hand committed ``records`` to every output (called by the store, in log order)."""
        self.total += len(records)
        for output in self._outputs:
            try:
                output(records)
            except Exception:
                log.exception("output %r failed", output)
