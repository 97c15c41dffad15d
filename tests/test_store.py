"""The store contract, run against every store: order, ids, bounds, resume, gap.

A new store joins by adding its URL to ``store_url``'s params (a fixture may
start what it needs, e.g. a server, and return the URL).
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from pathlib import Path

import pytest
from support import RedisServer

from devbus.bus.store import Record, Store, create_store
from devbus.envelope import Draft
from devbus.errors import ConfigError

TIMESTAMP = "2026-11-28T14:44:36.480879Z"
MIB = 1024 * 1024


class Opened:
    """An open store and what it delivered, in order."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.delivered: list[Record] = []
        self.changed = asyncio.Event()

    def deliver(self, records: Sequence[Record]) -> None:
        self.delivered.extend(records)
        self.changed.set()

    async def append(self, *types: str, data: dict[str, object] | None = None) -> list[Record]:
        return await self.store.append([Draft(t, data or {}, "test") for t in types], TIMESTAMP)

    async def delivered_count(self, count: int) -> None:
        async with asyncio.timeout(10):
            while len(self.delivered) < count:
                self.changed.clear()
                await self.changed.wait()


OpenStore = Callable[..., Awaitable[Opened]]


@pytest.fixture(params=["memory", "sqlite", "redis"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """The URL of each store under test (a fresh one per test; for Redis, a fresh redis-server)."""
    if request.param == "sqlite":
        return f"sqlite:{tmp_path / 'events.db'}"
    if request.param == "redis":
        server: RedisServer = request.getfixturevalue("redis_server")
        return server.url
    return str(request.param)


@pytest.fixture
async def open_store(store_url: str) -> AsyncIterator[OpenStore]:
    """Open stores of ``store_url`` with the given bounds; every one is closed after the test."""
    opened: list[Store] = []

    async def factory(*, history: int = 1000, history_bytes: int = MIB, url: str | None = None) -> Opened:
        store = create_store(url or store_url, history=history, history_bytes=history_bytes)
        result = Opened(store)
        await store.open(result.deliver)
        opened.append(store)
        return result

    yield factory
    for store in opened:
        await store.close()


def types(records: Sequence[Record]) -> list[str]:
    return [r.type for r in records]


async def test_appends_are_numbered_delivered_once_and_read_back_in_order(open_store: OpenStore) -> None:
    bus = await open_store()
    first = bus.store.append([Draft("a.1", {}, "test"), Draft("a.2", {}, "test")], TIMESTAMP)
    second = bus.store.append([Draft("b.1", {"n": 1}, "test")], TIMESTAMP)
    records = await first + await second
    assert types(records) == ["a.1", "a.2", "b.1"]
    assert len({r.id for r in records}) == 3
    await bus.delivered_count(3)
    assert [r.id for r in bus.delivered] == [r.id for r in records]
    assert bus.store.last_id == records[-1].id
    event = bus.delivered[2].event
    assert (event.id, event.type, event.data, event.source, event.timestamp) == (
        records[2].id,
        "b.1",
        {"n": 1},
        "test",
        TIMESTAMP,
    )
    resume = await bus.store.resolve(records[0].id)
    assert not resume.gap
    page = await bus.store.read_after(resume.after, limit=10, max_bytes=MIB)
    assert [r.id for r in page] == [r.id for r in records[1:]]
    assert [r.json for r in page] == [r.json for r in records[1:]]


# The memory store commits and delivers inside append(): there is no moment in between
# to read in. Its own test below holds that.
@pytest.mark.parametrize("store_url", ["sqlite", "redis"], indirect=True)
async def test_reads_never_return_a_record_before_it_is_delivered(open_store: OpenStore) -> None:
    """The SSE cursor hands over to the live fan-out at the first record delivered after it joined."""
    bus = await open_store()
    start = (await bus.store.resolve("")).after
    pending = [bus.store.append([Draft(f"e.{n}", {}, "test")], TIMESTAMP) for n in range(50)]
    reads_in_flight = 0
    async with asyncio.timeout(10):
        while not all(future.done() for future in pending):
            page = await bus.store.read_after(start, limit=100, max_bytes=MIB)
            delivered = {r.id for r in bus.delivered}
            assert all(r.id in delivered for r in page)
            reads_in_flight += 1
        await asyncio.gather(*pending)
    # The reads above ran while appends were in flight: else this test proved nothing.
    assert reads_in_flight > 0


@pytest.mark.parametrize("store_url", ["memory"], indirect=True)
async def test_the_memory_store_delivers_before_append_returns(open_store: OpenStore) -> None:
    """A cursor that reads right after an append sees the record, and the fan-out has it already."""
    bus = await open_store()
    start = (await bus.store.resolve("")).after
    for n in range(3):
        future = bus.store.append([Draft(f"e.{n}", {}, "test")], TIMESTAMP)
        assert future.done()
        [record] = future.result()
        assert bus.delivered[-1] is record
        page = await bus.store.read_after(start, limit=100, max_bytes=MIB)
        assert [r.id for r in page] == [r.id for r in bus.delivered]


async def test_pages_are_bounded_in_count_and_bytes_but_hold_at_least_one(open_store: OpenStore) -> None:
    bus = await open_store()
    records = await bus.append(*(f"e.{n}" for n in range(10)), data={"pad": "x" * 100})
    start = (await bus.store.resolve("nonsense-1")).after
    assert types(await bus.store.read_after(start, limit=3, max_bytes=MIB)) == ["e.0", "e.1", "e.2"]
    size = len(records[0].json)
    assert types(await bus.store.read_after(start, limit=100, max_bytes=size * 2 + 1)) == ["e.0", "e.1"]
    assert types(await bus.store.read_after(start, limit=100, max_bytes=1)) == ["e.0"]
    assert await bus.store.read_after(records[-1].id, limit=100, max_bytes=MIB) == []
    assert types(await bus.store.read_before(None, limit=3, max_bytes=MIB)) == ["e.7", "e.8", "e.9"]
    assert types(await bus.store.read_before(records[7].id, limit=2, max_bytes=MIB)) == ["e.5", "e.6"]
    assert types(await bus.store.read_before(None, limit=100, max_bytes=1)) == ["e.9"]


async def test_history_keeps_the_newest_events_within_the_count_bound(open_store: OpenStore) -> None:
    bus = await open_store(history=5)
    records = await bus.append(*(f"e.{n}" for n in range(8)))
    assert len(bus.store) == 5
    assert types(await bus.store.read_before(None, limit=100, max_bytes=MIB)) == [f"e.{n}" for n in range(3, 8)]
    # The client saw e.1: e.2 is gone, so it resumes before e.3 with a gap.
    resume = await bus.store.resolve(records[1].id)
    assert resume.gap
    assert types(await bus.store.read_after(resume.after, limit=100, max_bytes=MIB))[0] == "e.3"
    # The client saw e.2, the one just before the oldest retained: nothing is missing.
    resume = await bus.store.resolve(records[2].id)
    assert not resume.gap
    assert types(await bus.store.read_after(resume.after, limit=100, max_bytes=MIB))[0] == "e.3"


# Redis trims a stream by count only (README, "Stores"): the byte bound is the local stores'.
@pytest.mark.parametrize("store_url", ["memory", "sqlite"], indirect=True)
async def test_history_keeps_the_newest_events_within_the_byte_bound(open_store: OpenStore) -> None:
    probe = await open_store(url="memory")
    [sample] = await probe.append("big", data={"pad": "x" * 1000})
    bus = await open_store(history_bytes=len(sample.json) * 3)
    await bus.append(*(["big"] * 5), data={"pad": "x" * 1000})
    assert len(bus.store) == 3
    assert sum(len(r.json) for r in await bus.store.read_before(None, limit=100, max_bytes=MIB)) <= 3 * len(sample.json)


async def test_an_id_from_another_store_or_nonsense_resumes_from_the_oldest_with_a_gap(open_store: OpenStore) -> None:
    other = await open_store(url="memory")
    [foreign] = await other.append("elsewhere")
    bus = await open_store()
    await bus.append("x.1", "x.2")
    for since in (foreign.id, "nonsense", "0-0"):
        resume = await bus.store.resolve(since)
        assert resume.gap, since
        assert types(await bus.store.read_after(resume.after, limit=100, max_bytes=MIB)) == ["x.1", "x.2"]


async def test_the_newest_id_resumes_with_nothing_to_replay(open_store: OpenStore) -> None:
    bus = await open_store()
    [*_, last] = await bus.append("x.1", "x.2")
    resume = await bus.store.resolve(last.id)
    assert not resume.gap
    assert await bus.store.read_after(resume.after, limit=100, max_bytes=MIB) == []
    await bus.append("x.3")
    assert types(await bus.store.read_after(resume.after, limit=100, max_bytes=MIB)) == ["x.3"]


SQLITE_ONLY = pytest.mark.parametrize("store_url", ["sqlite"], indirect=True)


@SQLITE_ONLY
async def test_sqlite_ids_continue_after_a_restart(tmp_path: Path, open_store: OpenStore) -> None:
    url = f"sqlite:{tmp_path / 'kept.db'}"
    first = await open_store(url=url)
    before = await first.append("run.1", "run.2")
    await first.store.close()
    second = await open_store(url=url)
    assert second.store.run == first.store.run
    assert second.store.last_id == before[-1].id
    resume = await second.store.resolve(before[0].id)
    assert not resume.gap
    after = await second.append("run.3")
    assert after[0].id not in {r.id for r in before}
    assert types(await second.store.read_after(resume.after, limit=100, max_bytes=MIB)) == ["run.2", "run.3"]


@SQLITE_ONLY
async def test_sqlite_refuses_a_file_of_another_version(tmp_path: Path, open_store: OpenStore) -> None:
    path = tmp_path / "old.db"
    with sqlite3.connect(path) as db:
        db.execute("CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
        db.execute("INSERT INTO meta VALUES ('schema_version', '99')")
    db.close()
    with pytest.raises(ConfigError, match="another devbus version"):
        await open_store(url=f"sqlite:{path}")


@SQLITE_ONLY
@pytest.mark.parametrize(
    "url",
    ["sqlite:/nonexistent-dir/x.db", "sqlite:", "postgres://localhost/x", "memori"],
    ids=["missing-dir", "no-path", "unknown-scheme", "typo"],
)
async def test_a_bad_store_url_says_what_to_do(url: str, open_store: OpenStore) -> None:
    with pytest.raises(ConfigError, match="--store"):
        await open_store(url=url)
