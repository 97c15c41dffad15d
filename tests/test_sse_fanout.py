"""The SSE fan-out: one frame per group of like subscribers, filters matched once per type."""

from __future__ import annotations

from devbus.bus.budget import MemoryBudget
from devbus.bus.metrics import Metrics
from devbus.bus.outputs.sse.fanout import Fanout
from devbus.bus.record import Record
from devbus.typefilter import TypeFilter


def record(n: int, event_type: str) -> Record:
    return Record(f"r-{n}", event_type, b'{"type":"%s"}' % event_type.encode())


def fanout(**options: int) -> Fanout:
    metrics = Metrics()
    return Fanout(
        subscriber_buffer=options.get("buffer", 1 << 20),
        max_subscribers=options.get("max", 100),
        metrics=metrics,
        budget=MemoryBudget(options.get("budget", 1 << 30), metrics=metrics),
    )


async def test_each_subscriber_gets_the_matching_frames_and_reach_counts_them() -> None:
    out = fanout()
    agents = out.subscribe(TypeFilter(("agent.*",)), named=False)
    everything = out.subscribe(TypeFilter(), named=True)
    for outlet in (agents, everything):
        out.join(outlet)
    reports: list[tuple[list[str], list[int]]] = []
    out.report_to(lambda records, counts: reports.append(([r.id for r in records], list(counts))))
    out([record(1, "agent.created"), record(2, "rental.created")])
    assert reports == [(["r-1", "r-2"], [2, 1])]
    assert agents.take_now() == b'id: r-1\ndata: {"type":"agent.created"}\n\n'
    assert everything.take_now() == (
        b'id: r-1\nevent: agent.created\ndata: {"type":"agent.created"}\n\n'
        b'id: r-2\nevent: rental.created\ndata: {"type":"rental.created"}\n\n'
    )


async def test_a_new_subscriber_is_matched_against_types_seen_before_it_came() -> None:
    """The type → groups cache is rebuilt when subscriptions change."""
    out = fanout()
    first = out.subscribe(TypeFilter(("a.*",)), named=False)
    out.join(first)
    out([record(1, "b.x")])  # caches "b.x" → no group
    late = out.subscribe(TypeFilter(("b.*",)), named=False)
    out.join(late)
    out([record(2, "b.x")])
    assert b"r-2" in late.take_now()
    out.release(late)
    out([record(3, "b.x")])
    assert late.take_now() == b""


async def test_subscribers_count_until_released_even_after_eviction() -> None:
    out = fanout(buffer=10, max=1)
    outlet = out.subscribe(TypeFilter(), named=False)
    aborted = []
    outlet.on_abort(lambda: aborted.append(True))
    out.join(outlet)
    out([record(1, "big")])  # its writer is busy (never waited): over the buffer, evicted
    assert outlet.evicted and aborted == [True]
    assert out.subscribers == 1  # the connection still counts until its handler ends
    out.release(outlet)
    assert out.subscribers == 0


async def test_an_anchored_join_learns_the_first_record_delivered_after_it() -> None:
    out = fanout()
    outlet = out.subscribe(TypeFilter(("x",)), named=False)
    out.join(outlet, anchor=True)
    out([record(7, "other"), record(8, "x")])
    out([record(9, "x")])
    assert outlet.anchor == "r-7"


async def test_subscribers_behind_on_the_same_chunks_count_them_once_against_the_memory_budget() -> None:
    """Regression: 1,000 subscribers a burst behind counted the burst 1,000 times, and the budget closed 439."""
    out = fanout(budget=1 << 20, buffer=1 << 20, max=1000)
    outlets = [out.subscribe(TypeFilter(), named=False) for _ in range(1000)]
    for outlet in outlets:
        out.join(outlet)
    out([record(n, "burst.event") for n in range(200)])  # their writers are busy: it stays pending
    chunk = outlets[0].pending_bytes
    assert chunk > 4000  # 1,000 times that is 4 MB: four times the budget
    assert out.budget.held() == chunk  # one bytes object, held by all
    assert not any(outlet.evicted for outlet in outlets)


async def test_subscribers_behind_on_shared_chunks_past_the_budget_are_dropped_until_none_holds_them() -> None:
    out = fanout(budget=1 << 10, max=10)
    outlets = [out.subscribe(TypeFilter(), named=False) for _ in range(10)]
    for outlet in outlets:
        out.join(outlet)
    out([record(n, "burst.event") for n in range(200)])
    assert all(outlet.evicted for outlet in outlets)  # dropping some frees nothing while others hold it
    assert out.budget.held() == 0
