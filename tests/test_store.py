"""The store contract, run against every store: order, ids, bounds, resume, gap, idempotent appends.

A new store joins by adding its URL to ``store_url``'s params (a fixture may
start what it needs, e.g. a server, and return the URL).
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

import pytest
from support import RedisServer

from devbus.bus.store import Record, Store, claims, create_store, redis_script
from devbus.bus.store.base import Appended, Claim
from devbus.envelope import Draft
from devbus.errors import ConfigError, KeyReused, StoreUnavailable

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


# -- idempotent appends: producers' seqs and keys ---------------------------------------------


def drafts(*numbers: int) -> list[Draft]:
    return [Draft("claimed", {"n": n}, "test") for n in numbers]


async def append(opened: Opened, numbers: Sequence[int], claim: Claim) -> Appended:
    return await opened.store.append(drafts(*numbers), TIMESTAMP, claim)


def produced(producer: str, *seqs: int) -> Claim:
    return Claim(producer=producer, seqs=seqs)


def numbers(records: Sequence[Any]) -> list[int]:
    return [record.event.data["n"] for record in records]


async def test_a_producers_seq_already_stored_is_skipped(open_store: OpenStore) -> None:
    bus = await open_store()
    first = await append(bus, [1, 2, 3], produced("p", 1, 2, 3))
    assert numbers(first) == [1, 2, 3] and first.skipped == 0
    again = await append(bus, [2, 3, 4, 5], produced("p", 2, 3, 4, 5))
    assert numbers(again) == [4, 5] and again.skipped == 2
    nothing = await append(bus, [4, 5], produced("p", 4, 5))
    assert list(nothing) == [] and nothing.skipped == 2
    other = await append(bus, [1], produced("q", 1))  # producers are apart
    assert numbers(other) == [1]
    await bus.delivered_count(6)
    assert numbers(bus.delivered) == [1, 2, 3, 4, 5, 1]
    assert await bus.store.producer_seq("p") == 5
    assert await bus.store.producer_seq("q") == 1
    assert await bus.store.producer_seq("never") == 0


async def test_a_key_stores_once_and_answers_its_first_ids(open_store: OpenStore) -> None:
    bus = await open_store()
    claim = Claim(key="order-42", fingerprint=b"body-a")
    first = await append(bus, [1, 2], claim)
    again = await append(bus, [1, 2], claim)
    assert list(again) == [] and again.replayed == [record.id for record in first]
    with pytest.raises(KeyReused, match="order-42"):
        await append(bus, [3], Claim(key="order-42", fingerprint=b"body-b"))
    await append(bus, [3], Claim(key="order-43", fingerprint=b"body-b"))
    await bus.delivered_count(3)
    assert numbers(bus.delivered) == [1, 2, 3]


async def test_a_repeat_sent_while_the_first_is_committing_is_answered_after_it(open_store: OpenStore) -> None:
    """Appended in the same turn: the repeat's answer never comes before the first's commit."""
    bus = await open_store()
    first = bus.store.append(drafts(1), TIMESTAMP, Claim(key="k", fingerprint=b"f", producer="p", seqs=(1,)))
    repeat = bus.store.append(drafts(1), TIMESTAMP, Claim(producer="p", seqs=(1,)))
    replay = bus.store.append(drafts(1), TIMESTAMP, Claim(key="k", fingerprint=b"f"))
    stored = await first
    assert first.done()
    assert (await repeat).skipped == 1
    assert (await replay).replayed == [stored[0].id]


@pytest.mark.parametrize("store_url", ["sqlite", "redis"], indirect=True)
async def test_producers_and_keys_survive_a_restart(open_store: OpenStore) -> None:
    first = await open_store()
    stored = await append(first, [1, 2], Claim(key="k", fingerprint=b"f", producer="p", seqs=(1, 2)))
    await first.store.close()
    second = await open_store()
    assert await second.store.producer_seq("p") == 2
    repeat = await append(second, [1, 2, 3], produced("p", 1, 2, 3))
    assert numbers(repeat) == [3] and repeat.skipped == 2
    replay = await append(second, [1, 2], Claim(key="k", fingerprint=b"f"))
    assert replay.replayed == [record.id for record in stored]


async def test_producers_and_keys_are_bounded(open_store: OpenStore, monkeypatch: pytest.MonkeyPatch) -> None:
    for module in (claims, redis_script):
        monkeypatch.setattr(module, "MAX_PRODUCERS", 3)
        monkeypatch.setattr(module, "MAX_KEYS", 3)
    bus = await open_store()
    for n in range(6):
        await append(bus, [n], Claim(key=f"k{n}", fingerprint=b"f", producer=f"p{n}", seqs=(1,)))
    # The oldest are forgotten: a repeat of theirs is stored again, the newest are still known.
    assert [await bus.store.producer_seq(f"p{n}") for n in range(6)] == [0, 0, 0, 1, 1, 1]
    assert (await append(bus, [0], Claim(key="k0", fingerprint=b"f"))).replayed is None
    assert (await append(bus, [5], Claim(key="k5", fingerprint=b"f"))).replayed is not None


@pytest.mark.parametrize("store_url", ["sqlite"], indirect=True)
async def test_a_failed_transaction_forgets_what_it_claimed(
    open_store: OpenStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A seq or key whose commit failed is not stored: sent again, it must be stored, not skipped."""
    from devbus.bus.store.sqlite_claims import ClaimRows

    bus = await open_store()
    await append(bus, [1], produced("p", 1))
    write = ClaimRows.write

    def fail(self: Any, db: sqlite3.Connection) -> None:
        raise sqlite3.OperationalError("disk I/O error")

    monkeypatch.setattr(ClaimRows, "write", fail)
    with pytest.raises(StoreUnavailable):
        await append(bus, [2, 3], Claim(key="k", fingerprint=b"f", producer="p", seqs=(2, 3)))
    monkeypatch.setattr(ClaimRows, "write", write)
    assert await bus.store.producer_seq("p") == 1
    again = await append(bus, [2, 3], Claim(key="k", fingerprint=b"f", producer="p", seqs=(2, 3)))
    assert numbers(again) == [2, 3] and again.replayed is None
    await bus.delivered_count(3)
    assert numbers(bus.delivered) == [1, 2, 3]


@pytest.mark.parametrize("store_url", ["sqlite"], indirect=True)
async def test_a_version_1_file_is_migrated_and_keeps_its_events(open_store: OpenStore, tmp_path: Path) -> None:
    path = tmp_path / "v1.db"
    with sqlite3.connect(path) as db:
        db.executescript(
            """
            CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
            CREATE TABLE events (seq INTEGER PRIMARY KEY, type TEXT NOT NULL, json BLOB NOT NULL);
            INSERT INTO meta VALUES ('schema_version', '1'), ('run', 'cafe0001');
            """
        )
        db.executemany(
            "INSERT INTO events VALUES (?, 'old', ?)",
            [
                (seq, f'{{"id":"cafe0001-{seq}","type":"old","data":{{}},"timestamp":"{TIMESTAMP}","source":"t"}}')
                for seq in (1, 2)
            ],
        )
    db.close()
    bus = await open_store(url=f"sqlite:{path}")
    assert bus.store.last_id == "cafe0001-2"
    stored = await append(bus, [3], produced("p", 1))
    assert stored[0].id == "cafe0001-3"
    await bus.store.close()
    with sqlite3.connect(path) as db:
        assert db.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone() == ("2",)
        assert db.execute("SELECT id, seq FROM producers").fetchall() == [("p", 1)]
    db.close()


@pytest.mark.parametrize("store_url", ["redis"], indirect=True)
async def test_a_call_whose_answer_was_lost_is_asked_again_and_stored_once(
    open_store: OpenStore, redis_server: RedisServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Redis ran the append, then the connection broke before its answer: the retry must not store again."""
    from redis.exceptions import ConnectionError as RedisConnectionError

    bus = await open_store()
    writer: Any = bus.store._writer  # type: ignore[attr-defined]
    script = writer._script
    calls = 0

    async def lose_first_answer(**kwargs: Any) -> Any:
        nonlocal calls
        calls += 1
        answer = await script(**kwargs)
        if calls == 1:
            raise RedisConnectionError("connection lost after the call ran")
        return answer

    monkeypatch.setattr(writer, "_script", lose_first_answer)
    stored = await append(bus, [1, 2, 3], Claim())
    assert calls == 2
    assert numbers(stored) == [1, 2, 3]
    await bus.delivered_count(3)
    assert numbers(bus.delivered) == [1, 2, 3]
    import redis

    assert redis.Redis(port=redis_server.port).xlen("devbus:events") == 3
