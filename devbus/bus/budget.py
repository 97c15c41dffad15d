"""The bus's memory budget: what every connection holds for its peer, bounded all together.

Each peer is bounded on its own (an SSE subscriber by --subscriber-buffer, a
ZeroMQ egress listener by --egress-buffer and its subscriptions, a ZeroMQ message
by --max-message), but peers are many: 100 egress listeners that read nothing
took the bus to 1,665 MB. So everything that holds bytes for one peer is a
:class:`Holder` of one :class:`MemoryBudget` (``--memory-budget``): every SSE
subscriber, live or replaying; every ZeroMQ egress listener; every ZeroMQ sender.
A holder says what it holds now (its socket's unsent bytes, its queue, its
message in progress, its subscriptions) and can be dropped. Bytes several
holders share (the SSE fan-out's chunks, the same objects queued for every
subscriber of a group) are a pool, counted once in the total: a holder's
``owned`` bytes are its alone, its ``held`` bytes include its part of a pool,
and say who holds most.

Measuring every holder at every write would cost the fan-out a pass over all of
them per write, so the budget keeps an upper bound instead. Every byte that comes
to be held for a peer is charged (a write, a read, a queued chunk, a
subscription); bytes that leave (sent, or the peer gone) are not seen, so the
bound only overstates. Once it passes the budget, every holder is measured: if
they really hold more, those holding most are dropped first (their connection
closed at once and their buffers freed, never waiting for a peer that does not
read) until the rest fit, each counted in ``devbus_memory_dropped_total{peer}``
and logged at most once a minute. A count that finds the bus near the budget
waits for 1/SLACK of it to be charged before the next one, so the budget may be
passed by that much (4 MiB of the default 128 MiB) between two counts; a bus
well under it is counted once per budget's worth of bytes written, however many
peers it has.

Invariant: every byte held for a peer was charged since the last count, or was
measured by it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Protocol

from devbus.bus.metrics import Metrics

__all__ = ["SLACK", "SMALLEST", "Holder", "MemoryBudget"]

log = logging.getLogger(__name__)

SLACK = 32  # a count near the budget waits for 1/SLACK of it to be charged before the next
# The smallest budget `devbus run` takes: below it, peers that keep up (a few KiB each in
# flight) would be dropped for what any busy bus holds for an instant.
SMALLEST = 1024 * 1024
LOG_EVERY = 60.0  # seconds between two log lines about connections dropped for the budget

# What each kind of holder is called in the log line (its kind is the metrics label).
KINDS = {
    "sse": "an SSE subscriber",
    "replay": "an SSE subscriber resuming from history",
    "egress": "a ZeroMQ egress listener",
    "ingest": "a ZeroMQ sender",
}


class Holder(Protocol):
    """A connection that holds bytes for its peer."""

    @property
    def kind(self) -> str:
        """What it is, as a metrics label: sse, replay, egress or ingest."""

    @property
    def held(self) -> int:
        """Bytes held for the peer now (queued, unsent, half-received, subscribed), shared ones included."""

    @property
    def owned(self) -> int:
        """The part of ``held`` that is this holder's alone (the rest is in a pool)."""

    def drop(self) -> None:
        """Close the connection now, without waiting for the peer, freeing what it holds."""


def _mib(size: int) -> str:
    return f"{size / 2**20:.1f} MiB"


class MemoryBudget:
    """One budget for what every holder holds; past it, the holders holding most are dropped first."""

    def __init__(self, limit: int, *, metrics: Metrics) -> None:
        self.limit = limit
        self.dropped = 0
        self._metrics = metrics
        self._holders: dict[Holder, None] = {}
        self._pools: list[Callable[[], int]] = []  # each says what its shared bytes are now
        self._bound = 0  # an upper bound of what the holders hold (see the invariant above)
        self._next_count = limit  # count the holders once the bound passes this
        self._log_after = 0.0  # time.monotonic() before which a drop is only counted
        self._unlogged = 0  # drops since the last log line
        metrics.memory_budget.set(limit)
        metrics.watch(metrics.memory_held, self.held)

    def join(self, holder: Holder) -> None:
        """Count what ``holder`` holds from now on."""
        self._holders[holder] = None

    def leave(self, holder: Holder) -> None:
        """Stop counting ``holder`` (its connection is gone); safe to call twice."""
        self._holders.pop(holder, None)

    def add_pool(self, measure: Callable[[], int]) -> None:
        """Count what ``measure`` says holders share, once; it shrinks as the holders sharing it are dropped."""
        self._pools.append(measure)

    def charge(self, size: int) -> None:
        """Note that ``size`` more bytes may be held for some peer; count and drop if that passes the budget."""
        self._bound += size
        if self._bound > self._next_count:
            self.count()

    def held(self) -> int:
        """What every holder holds now, measured, shared bytes once."""
        return sum(holder.owned for holder in self._holders) + self._pooled()

    def _pooled(self) -> int:
        return sum(measure() for measure in self._pools)

    def status(self) -> dict[str, int]:
        """The budget, what is held now and how many connections were dropped for it, for /health."""
        return {"budget": self.limit, "held": self.held(), "dropped": self.dropped}

    def count(self) -> None:
        """Measure every holder; drop those holding most until the rest fit in the budget."""
        holders = list(self._holders)
        owned = [holder.owned for holder in holders]
        alone = sum(owned)
        total = alone + self._pooled()
        if total > self.limit:
            sizes = [holder.held for holder in holders]
            for index in sorted(range(len(holders)), key=sizes.__getitem__, reverse=True):
                self._drop(holders[index], sizes[index], total)
                alone -= owned[index]
                total = alone + self._pooled()
                if total <= self.limit:
                    break
        self._bound = total
        self._next_count = max(self.limit, total + self.limit // SLACK)

    def _drop(self, holder: Holder, size: int, total: int) -> None:
        kind = holder.kind
        self.leave(holder)
        holder.drop()
        self.dropped += 1
        self._metrics.memory_dropped.labels(kind).inc()
        now = time.monotonic()
        if now < self._log_after:
            self._unlogged += 1
            return
        since = f"; {self._unlogged} more dropped since the last such line" if self._unlogged else ""
        log.warning(
            "connections held %s, over the memory budget of %s (--memory-budget): closed %s holding %s, "
            "the most of any%s; further ones this minute are only counted (devbus_memory_dropped_total)",
            _mib(total),
            _mib(self.limit),
            KINDS.get(kind, kind),
            _mib(size),
            since,
        )
        self._log_after = now + LOG_EVERY
        self._unlogged = 0
