"""Idempotent appends, run against every store: producers' seqs, keys, their bounds, restarts, failures."""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
from support import RedisServer
from test_store import TIMESTAMP, Opened, OpenStore, open_store, store_url  # noqa: F401 - fixtures

from devbus.bus.store import claims, redis_script
from devbus.bus.store.base import Appended, Claim
from devbus.envelope import Draft
from devbus.errors import KeyReused, StoreUnavailable


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
    from devbus.bus.store import sqlite

    bus = await open_store()
    await append(bus, [1], produced("p", 1))
    write = sqlite._ClaimRows.write

    def fail(self: Any, db: sqlite3.Connection) -> None:
        raise sqlite3.OperationalError("disk I/O error")

    monkeypatch.setattr(sqlite._ClaimRows, "write", fail)
    with pytest.raises(StoreUnavailable):
        await append(bus, [2, 3], Claim(key="k", fingerprint=b"f", producer="p", seqs=(2, 3)))
    monkeypatch.setattr(sqlite._ClaimRows, "write", write)
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
    store: Any = bus.store
    script = store._append_script
    calls = 0

    async def lose_first_answer(**kwargs: Any) -> Any:
        nonlocal calls
        calls += 1
        answer = await script(**kwargs)
        if calls == 1:
            raise RedisConnectionError("connection lost after the call ran")
        return answer

    monkeypatch.setattr(store, "_append_script", lose_first_answer)
    stored = await append(bus, [1, 2, 3], Claim())
    assert calls == 2
    assert numbers(stored) == [1, 2, 3]
    await bus.delivered_count(3)
    assert numbers(bus.delivered) == [1, 2, 3]
    import redis

    assert redis.Redis(port=redis_server.port).xlen("devbus:events") == 3
