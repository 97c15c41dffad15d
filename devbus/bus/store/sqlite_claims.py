"""The SQLite store's transactions and what makes its appends idempotent.

A :class:`Transaction` is what one commit of the writer thread holds: the
records numbered on the loop during a turn, the appends to answer once they are
committed, and the rows of the ``producers`` and ``keys`` tables their claims
write in the same transaction. :class:`FileClaims` keeps the producers and keys
in memory (``claims.py``), so that an append is judged on the loop, and takes a
transaction's changes back if its commit fails, so that memory never claims
what the file does not hold.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import Sequence

from devbus.bus.record import Record
from devbus.bus.store.base import KEY_WINDOW, MAX_KEYS, MAX_PRODUCERS, Appended, Claim
from devbus.bus.store.claims import Claims, KeyUse, Undo
from devbus.bus.store.sequence import format_id
from devbus.bus.store.sqlite_file import Loaded

__all__ = ["ClaimRows", "FileClaims", "Transaction"]


class Transaction:
    """Records numbered on the loop, the appends they answer, and the claims they make, for one commit."""

    __slots__ = ("answers", "keys", "producers", "records", "undo")

    def __init__(self) -> None:
        self.records: list[Record] = []
        # Per append: its future, where its records start and how many, what it skipped, a key's first ids.
        self.answers: list[tuple[asyncio.Future[Appended], int, int, int, list[str] | None]] = []
        self.producers: dict[str, tuple[int, float]] = {}  # rows to write: id -> (seq, seen)
        self.keys: list[tuple[str, bytes, int, int, float]] = []  # rows to write
        self.undo: Undo = []  # what to take back in memory if the commit fails

    def add(
        self, future: asyncio.Future[Appended], records: list[Record], skipped: int, replayed: list[str] | None
    ) -> None:
        """Answer ``future`` with ``records`` once this transaction commits."""
        self.answers.append((future, len(self.records), len(records), skipped, replayed))
        self.records.extend(records)

    def answer(self) -> None:
        """The transaction committed: resolve every append with its records."""
        for future, start, count, skipped, replayed in self.answers:
            if not future.done():
                future.set_result(Appended(self.records[start : start + count], skipped=skipped, replayed=replayed))

    def fail(self, error: Exception) -> None:
        """The transaction failed: every append fails with ``error``."""
        for future, *_ in self.answers:
            if not future.done():
                future.set_exception(error)


class ClaimRows:
    """The rows of producers and keys one transaction writes, and how far it trims those tables."""

    def __init__(self, transaction: Transaction, trim: tuple[int, int]) -> None:
        self.producers = [(producer, seq, seen) for producer, (seq, seen) in transaction.producers.items()]
        self.keys = transaction.keys
        self.trim = trim

    def write(self, db: sqlite3.Connection) -> None:
        """In the writer's transaction: write the rows, then trim what is past the bounds."""
        if self.producers:
            db.executemany("INSERT OR REPLACE INTO producers VALUES (?, ?, ?)", self.producers)
        if self.keys:
            db.executemany("INSERT OR REPLACE INTO keys VALUES (?, ?, ?, ?, ?)", self.keys)
            db.execute("DELETE FROM keys WHERE created < ?", (time.time() - KEY_WINDOW,))
        producers, keys = self.trim
        if producers:
            db.execute(
                "DELETE FROM producers WHERE id NOT IN (SELECT id FROM producers ORDER BY seen DESC LIMIT ?)",
                (producers,),
            )
        if keys:
            db.execute(
                "DELETE FROM keys WHERE key NOT IN (SELECT key FROM keys ORDER BY created DESC LIMIT ?)", (keys,)
            )


class FileClaims(Claims):
    """The producers and keys of one file, judged in memory and written with the events they belong to."""

    def __init__(self) -> None:
        super().__init__()
        self._rows = [0, 0]  # rows in the producers and keys tables (as far as this store wrote them)

    def load_file(self, loaded: Loaded) -> None:
        """Take what the file holds."""
        keys = [
            (key, KeyUse(fingerprint, [format_id(loaded.run, first + i) for i in range(count)], created))
            for key, fingerprint, first, count, created in loaded.keys
        ]
        self.load(loaded.producers, keys)
        self._rows = [len(loaded.producers), len(loaded.keys)]

    def stored(self, claim: Claim, records: Sequence[Record], first: int, transaction: Transaction) -> None:
        """Remember what ``claim`` stored (seqs from ``first``), and the rows that say so in ``transaction``."""
        before = len(self.producers), len(self.keys)
        self.record(claim, records, transaction.undo)
        seen = time.time()
        if claim.producer is not None:
            transaction.producers[claim.producer] = (self.seq(claim.producer), seen)
        if claim.key is not None:
            transaction.keys.append((claim.key, claim.fingerprint, first, len(records), seen))
        # New producers and keys add rows; the writer trims the tables past their bounds.
        self._rows[0] += max(0, len(self.producers) - before[0])
        self._rows[1] += max(0, len(self.keys) - before[1]) + (claim.key is not None)

    def rows(self, transaction: Transaction) -> ClaimRows:
        """What ``transaction`` writes of claims, trimming a table once it is a tenth past its bound."""
        trim = [0, 0]
        for table, bound in enumerate((MAX_PRODUCERS, MAX_KEYS)):
            # A tenth past: one trim per thousand new rows, not one per transaction.
            if self._rows[table] > bound + bound // 10:
                trim[table] = bound
                self._rows[table] = bound
        return ClaimRows(transaction, (trim[0], trim[1]))
