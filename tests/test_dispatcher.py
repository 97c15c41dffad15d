"""The dispatcher: stamps, appends to the store, and hands what the store delivers to every output in order."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence

import pytest

from devbus.bus.dispatcher import Dispatcher
from devbus.bus.metrics import Metrics
from devbus.bus.record import Record
from devbus.bus.store.base import Appended, Claim
from devbus.bus.store.memory import MemoryStore
from devbus.envelope import Draft


async def open_dispatcher() -> Dispatcher:
    dispatcher = Dispatcher(MemoryStore(history=100), metrics=Metrics())
    await dispatcher.start()
    return dispatcher


async def test_every_output_gets_every_batch_in_order_with_one_shared_encoding() -> None:
    dispatcher = await open_dispatcher()
    seen: dict[str, list[Record]] = {"a": [], "b": []}
    for name in seen:
        dispatcher.add_output(seen[name].extend)
    first = await dispatcher.publish([Draft("x.1", {}, "test"), Draft("x.2", {}, "test")])
    second = await dispatcher.publish([Draft("x.3", {"k": 1}, "test")])
    assert [r.type for r in seen["a"]] == ["x.1", "x.2", "x.3"]
    assert [r.id for r in seen["a"]] == [r.id for r in first + second]
    # The same record objects (and JSON bytes) go to every output: nothing is encoded twice.
    assert all(a is b for a, b in zip(seen["a"], seen["b"], strict=True))
    assert dispatcher.total == 3
    assert dispatcher.last_id == second[0].id


async def test_a_batch_is_stamped_once_in_utc() -> None:
    dispatcher = await open_dispatcher()
    records = await dispatcher.publish([Draft("x", {}, "test")] * 3)
    stamps = {r.event.timestamp for r in records}
    assert len(stamps) == 1
    assert stamps.pop().endswith("Z")


async def test_a_failing_output_is_logged_and_the_others_still_get_the_batch(caplog: pytest.LogCaptureFixture) -> None:
    dispatcher = await open_dispatcher()

    def broken(batch: Sequence[Record]) -> None:
        raise RuntimeError("output bug")

    later: list[Record] = []
    dispatcher.add_output(broken)
    dispatcher.add_output(later.extend)
    with caplog.at_level(logging.ERROR, logger="devbus.bus.dispatcher"):
        await dispatcher.publish([Draft("x", {}, "test")])
    assert [r.type for r in later] == ["x"]
    assert "output bug" in caplog.text


async def test_a_removed_output_gets_nothing_more() -> None:
    dispatcher = await open_dispatcher()
    seen: list[Record] = []
    remove = dispatcher.add_output(seen.extend)
    await dispatcher.publish([Draft("before", {}, "test")])
    remove()
    await dispatcher.publish([Draft("after", {}, "test")])
    assert [r.type for r in seen] == ["before"]


async def test_events_are_counted_by_source_once_committed() -> None:
    dispatcher = await open_dispatcher()
    await dispatcher.publish([Draft("x", {}, "zmq"), Draft("x", {}, "zmq"), Draft("x", {}, "http")])
    text = dispatcher.metrics.render().decode()
    assert 'devbus_events_total{source="zmq"} 2.0' in text
    assert 'devbus_events_total{source="http"} 1.0' in text


async def test_a_store_that_commits_later_delivers_after_publish_returns() -> None:
    """With a store that commits in the background, outputs run when it commits, not when publish is called."""

    class LateStore(MemoryStore):
        def append(
            self, drafts: Sequence[Draft], timestamp: str, claim: Claim | None = None
        ) -> asyncio.Future[Appended]:
            loop = asyncio.get_running_loop()
            late: asyncio.Future[Appended] = loop.create_future()
            loop.call_soon(lambda: late.set_result(MemoryStore.append(self, drafts, timestamp, claim).result()))
            return late

    dispatcher = Dispatcher(LateStore(history=10), metrics=Metrics())
    await dispatcher.start()
    seen: list[Record] = []
    dispatcher.add_output(seen.extend)
    committed = dispatcher.publish([Draft("x", {}, "test")])
    assert seen == [] and not committed.done()
    [record] = await committed
    assert seen == [record]
