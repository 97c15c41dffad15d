"""The memory budget: holders measured only when the bound passes it, the largest dropped first, a log line a minute."""

from __future__ import annotations

import logging
import time

import pytest

from devbus.bus.budget import SLACK, MemoryBudget
from devbus.bus.metrics import Metrics

LIMIT = 1000
MIB = 1024 * 1024


class FakeHolder:
    """A connection that holds what the test says, and notes being dropped and measured."""

    def __init__(self, held: int, kind: str = "egress") -> None:
        self.holds = held
        self.kind = kind
        self.dropped = False
        self.measured = 0

    @property
    def held(self) -> int:
        return self.holds

    @property
    def owned(self) -> int:
        self.measured += 1
        return self.holds

    def drop(self) -> None:
        self.dropped = True
        self.holds = 0


def dropped_total(metrics: Metrics, kind: str) -> float:
    value = metrics.registry.get_sample_value("devbus_memory_dropped_total", {"peer": kind})
    return value or 0.0


def test_past_the_budget_the_holders_holding_most_are_dropped_until_the_rest_fit() -> None:
    metrics = Metrics()
    budget = MemoryBudget(LIMIT, metrics=metrics)
    small, middle, large = FakeHolder(300, "sse"), FakeHolder(400, "ingest"), FakeHolder(500)
    for holder in (small, middle, large):
        budget.join(holder)
        budget.charge(holder.held)
    assert (small.dropped, middle.dropped, large.dropped) == (False, False, True)
    assert budget.status() == {"budget": LIMIT, "held": 700, "dropped": 1}
    assert dropped_total(metrics, "egress") == 1
    large.holds = 700  # a dropped holder is counted no more, even before its connection is gone
    assert budget.held() == 700


def test_holders_are_measured_only_when_what_was_charged_passes_the_budget() -> None:
    """The fan-out charges every write: measuring every holder each time would cost a pass over all of them."""
    budget = MemoryBudget(LIMIT, metrics=Metrics())
    holder = FakeHolder(0)
    budget.join(holder)
    for _ in range(99):
        budget.charge(10)  # sent at once: nothing is really held
    assert holder.measured == 0
    budget.charge(20)  # 1010 charged: more than the budget, so it is measured, and fits
    assert holder.measured == 1 and not holder.dropped
    budget.charge(LIMIT + 1)
    assert holder.measured == 2


def test_near_the_budget_a_count_waits_for_a_slack_of_it_to_be_charged() -> None:
    budget = MemoryBudget(32 * LIMIT, metrics=Metrics())
    holder = FakeHolder(32 * LIMIT - 10)  # really held, just under the budget
    budget.join(holder)
    budget.charge(holder.holds)
    budget.charge(20)  # over the budget: measured, and it fits
    assert holder.measured == 1 and not holder.dropped
    budget.charge(32 * LIMIT // SLACK - 1)
    assert holder.measured == 1  # not a count per write while the bus stays just under the budget
    budget.charge(2)
    assert holder.measured == 2


class Sharing(FakeHolder):
    """A holder that also holds ``shares`` bytes of a pool others hold the same objects of."""

    def __init__(self, owned: int, shares: int) -> None:
        super().__init__(owned, "sse")
        self.shares = shares

    @property
    def held(self) -> int:
        return self.holds + self.shares

    def drop(self) -> None:
        super().drop()
        self.shares = 0


def test_bytes_holders_share_are_counted_once_and_the_holder_holding_most_goes_first() -> None:
    """1,000 SSE subscribers a burst behind hold one burst, not a thousand: what they share is one pool."""
    budget = MemoryBudget(LIMIT, metrics=Metrics())
    behind = [Sharing(10, 900) for _ in range(3)]
    fast = Sharing(50, 0)
    budget.add_pool(lambda: max(holder.shares for holder in [*behind, fast]))
    for holder in [*behind, fast]:
        budget.join(holder)
    budget.charge(2 * LIMIT)
    assert budget.held() == 3 * 10 + 50 + 900 and not any(h.dropped for h in [*behind, fast])
    behind[0].shares = 1200  # further behind than the others: its own part of the pool passes the budget
    budget.charge(2 * LIMIT)
    assert behind[0].dropped and not fast.dropped  # it held most, the pool's share included
    assert budget.held() == 2 * 10 + 50 + 900


def test_a_holder_that_left_is_not_measured_or_dropped() -> None:
    budget = MemoryBudget(LIMIT, metrics=Metrics())
    gone = FakeHolder(2 * LIMIT)
    budget.join(gone)
    budget.leave(gone)
    budget.leave(gone)  # twice: harmless
    budget.charge(2 * LIMIT)
    assert not gone.dropped and budget.held() == 0


def test_drops_are_logged_once_a_minute_and_all_counted(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    now = [100.0]
    monkeypatch.setattr(time, "monotonic", lambda: now[0])
    metrics = Metrics()
    budget = MemoryBudget(MIB, metrics=metrics)
    caplog.set_level(logging.WARNING, logger="devbus.bus.budget")
    for _ in range(5):
        holder = FakeHolder(3 * MIB)
        budget.join(holder)
        budget.charge(3 * MIB)
        assert holder.dropped
    assert len(caplog.records) == 1
    assert caplog.records[0].getMessage() == (
        "connections held 3.0 MiB, over the memory budget of 1.0 MiB (--memory-budget): closed a ZeroMQ egress "
        "listener holding 3.0 MiB, the most of any; further ones this minute are only counted "
        "(devbus_memory_dropped_total)"
    )
    now[0] += 60
    holder = FakeHolder(3 * MIB, "sse")
    budget.join(holder)
    budget.charge(3 * MIB)
    assert len(caplog.records) == 2
    assert "closed an SSE subscriber" in caplog.records[1].getMessage()
    assert "4 more dropped since the last such line" in caplog.records[1].getMessage()
    assert dropped_total(metrics, "egress") == 5 and dropped_total(metrics, "sse") == 1
    assert budget.dropped == 6
